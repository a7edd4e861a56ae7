using Microsoft.ML.Lora.Engine;

// Errors name the options field as the parameter, as the user set it there.
#pragma warning disable CA2208

namespace Microsoft.ML.Lora;

/// <summary>
/// The option checks every estimator shares (<see cref="LoraFineTuningEstimator"/>, <see cref="LoraImageFineTuningEstimator"/>):
/// column names, distinct output names, the adapter shape and the training loop's settings. Each error names the options
/// field as the parameter and says what is allowed.
/// </summary>
internal static class OptionChecks
{
    /// <exception cref="ArgumentException">The name is null or blank.</exception>
    public static void ColumnName(string? name, string field)
    {
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException($"{field} must name a column.", field);
        }
    }

    /// <summary>
    /// The column options of an estimator: every name valid (<see cref="ColumnName"/>, inputs first), then the outputs
    /// distinct (<see cref="DistinctOutputs"/>).
    /// </summary>
    /// <exception cref="ArgumentException">A name is empty or two clash (names the field).</exception>
    public static void Columns(IReadOnlyList<(string Field, string Name)> inputs, IReadOnlyList<(string Field, string Name)> outputs, string inputRoles)
    {
        foreach (var (field, name) in inputs.Concat(outputs))
        {
            ColumnName(name, field);
        }

        DistinctOutputs(outputs, inputs, inputRoles);
    }

    /// <summary>
    /// An output column may hide an input column of the same name that the model does not read (ML.NET's convention), but
    /// not another output column nor one of the columns the model reads (<paramref name="inputs"/>, described by <paramref name="inputRoles"/>).
    /// </summary>
    /// <exception cref="ArgumentException">Two of them are equal (names both fields).</exception>
    public static void DistinctOutputs(IReadOnlyList<(string Field, string Name)> outputs, IReadOnlyList<(string Field, string Name)> inputs, string inputRoles)
    {
        for (int i = 0; i < outputs.Count; i++)
        {
            foreach (var other in outputs.Skip(i + 1).Concat(inputs))
            {
                if (string.Equals(outputs[i].Name, other.Name, StringComparison.Ordinal))
                {
                    throw new ArgumentException(
                        $"{outputs[i].Field} and {other.Field} are both '{other.Name}'; an output column must not take the name of another output or of the {inputRoles} column.",
                        outputs[i].Field);
                }
            }
        }
    }

    /// <summary>Rank ≥ 1, Alpha a positive number, Dropout in [0, 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException">One is out of range.</exception>
    public static void Adapter(int rank, double alpha, double dropout)
    {
        AtLeastOne(rank, "Rank");
        PositiveNumber(alpha, "Alpha");
        Fraction(dropout, "Dropout");
    }

    /// <summary>The training loop's settings: counts at least 1, a positive learning rate, weight decay 0 or positive, warm-up in [0, 1), a ClipNorm that is a number.</summary>
    /// <param name="s">The settings taken from the options (<see cref="TrainingSettings.From(LoraFineTuningOptions)"/>).</param>
    /// <param name="zeroEpochsAllowed">Whether MaxEpochs may be 0 (the text estimator with an initial PEFT adapter).</param>
    /// <exception cref="ArgumentOutOfRangeException">One is out of range.</exception>
    public static void Training(TrainingSettings s, bool zeroEpochsAllowed)
    {
        AtLeastOne(s.BatchSize, nameof(s.BatchSize));
        if (!zeroEpochsAllowed)
        {
            AtLeastOne(s.MaxEpochs, nameof(s.MaxEpochs));
        }
        else if (s.MaxEpochs < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(s.MaxEpochs), s.MaxEpochs,
                "MaxEpochs must be 0 (use the initial PEFT adapter as it is) or positive.");
        }

        PositiveNumber(s.LearningRate, nameof(s.LearningRate));
        if (!(s.WeightDecay >= 0) || !double.IsFinite(s.WeightDecay))
        {
            throw new ArgumentOutOfRangeException(nameof(s.WeightDecay), s.WeightDecay, "WeightDecay must be 0 or a positive number.");
        }

        Fraction(s.WarmupRatio, nameof(s.WarmupRatio));
        AtLeastOne(s.GradientAccumulationSteps, nameof(s.GradientAccumulationSteps));
        AtLeastOne(s.ShuffleBufferSize, nameof(s.ShuffleBufferSize));
        AtLeastOne(s.EarlyStoppingPatience, nameof(s.EarlyStoppingPatience));
        AtLeastOne(s.InferenceBatchSize, nameof(s.InferenceBatchSize));
        AtLeastOne(s.ProgressInterval, nameof(s.ProgressInterval));
        if (double.IsNaN(s.ClipNorm))
        {
            throw new ArgumentOutOfRangeException(nameof(s.ClipNorm), s.ClipNorm, "ClipNorm must be a number (0 or less disables clipping).");
        }
    }

    /// <exception cref="ArgumentOutOfRangeException">The value is below 1.</exception>
    public static void AtLeastOne(int value, string field)
    {
        if (value < 1)
        {
            throw new ArgumentOutOfRangeException(field, value, $"{field} must be at least 1.");
        }
    }

    private static void PositiveNumber(double value, string field)
    {
        if (!(value > 0) || !double.IsFinite(value))
        {
            throw new ArgumentOutOfRangeException(field, value, $"{field} must be a positive number.");
        }
    }

    private static void Fraction(double value, string field)
    {
        if (!(value >= 0 && value < 1))
        {
            throw new ArgumentOutOfRangeException(field, value, $"{field} must be in [0, 1).");
        }
    }
}
