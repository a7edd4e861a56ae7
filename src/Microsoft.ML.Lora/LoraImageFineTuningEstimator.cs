using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Engine.Images;
using Microsoft.ML.Lora.Engine.Tasks;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;

// Errors about an option name the LoraImageFineTuningOptions field as the parameter, as the user set it there.
#pragma warning disable CA2208

namespace Microsoft.ML.Lora;

/// <summary>
/// Fine-tunes a pretrained image model (ML.NET's ResNet-18 by default) with LoRA on its convolutions and a linear head,
/// on an <see cref="IDataView"/> with an image column, and returns a <see cref="LoraImageTransformer"/>. Create it with
/// <c>mlContext.Transforms.LoraFineTuneImage(...)</c>.
/// </summary>
/// <remarks>
/// The same engine as <see cref="LoraFineTuningEstimator"/> (the task objects for label, loss, metrics and output columns;
/// the training loop: streamed rows through a seeded shuffle buffer, AdamW on the LoRA and head parameters only, warm-up
/// and decay, clipping, accumulation, progress, cancellation, validation with early stopping); only the model family
/// differs (images → tensors, the ResNet base). A sibling estimator rather than an option of <c>LoraFineTune</c>: the
/// inputs (an image column, the image size), the base (an ONNX ResNet, not a <see cref="Models.PretrainedModel"/>) and the
/// adapter targets (convolutions) have nothing in common with text, and one options class for both would hold fields
/// that mean nothing for the other. Deterministic on the CPU for a given MLContext seed.
/// </remarks>
public sealed class LoraImageFineTuningEstimator : IEstimator<LoraImageTransformer>
{
    private readonly IHostEnvironment env;
    private readonly LoraImageFineTuningOptions options;

    internal LoraImageFineTuningEstimator(IHostEnvironment env, LoraImageFineTuningOptions options)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(options);
        this.env = env;
        this.options = Validate(options);
    }

    private ColumnNames Columns => new(options.ImageColumnName, null, options.ScoreColumnName, options.PredictedLabelColumnName, options.ProbabilityColumnName);

    /// <summary>
    /// Trains the LoRA adapter and head on <paramref name="input"/>. Rows with a missing label (key 0, or a NaN or infinite
    /// regression label) are skipped and the log says how many.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A column is missing or has the wrong type (the message names it, the expected and the actual type).</exception>
    /// <exception cref="ArgumentException">No labelled rows, a single class, a constant regression label, or TargetModules matches no convolution.</exception>
    /// <exception cref="InvalidDataException">An image cannot be read (corrupt bytes, an unsupported pixel format, a missing image): the message names the column and the row.</exception>
    /// <exception cref="FileNotFoundException">The base model files are missing.</exception>
    /// <exception cref="InvalidOperationException">The loss became NaN or infinite, or a requested GPU is missing.</exception>
    /// <exception cref="OperationCanceledException">Training was cancelled.</exception>
    public LoraImageTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var host = env.Register(nameof(LoraImageFineTuningEstimator));
        var (label, images) = CheckTrainingSchema(input.Schema, nameof(input));
        var training = new ImageTrainingData(input, images, options.LabelColumnName, label);
        var statistics = training.ReadLabelStatistics();
        training.Validate(statistics, nameof(input));

        ImageTrainingData? validation = null;
        if (options.ValidationSet is not null)
        {
            var (validationLabel, validationImages) = CheckTrainingSchema(options.ValidationSet.Schema, nameof(LoraImageFineTuningOptions.ValidationSet));
            if (validationLabel.Kind != label.Kind || validationLabel.ClassCount != label.ClassCount)
            {
                throw new ArgumentOutOfRangeException(nameof(LoraImageFineTuningOptions.ValidationSet),
                    $"The validation label column '{options.LabelColumnName}' has type {options.ValidationSet.Schema[options.LabelColumnName].Type}; expected {input.Schema[options.LabelColumnName].Type} as in the training data.");
            }

            validation = new ImageTrainingData(options.ValidationSet, validationImages, options.LabelColumnName, validationLabel);
        }

        int seed = MlNetHost.GetSeed(env) ?? host.Rand.Next();
        var device = DeviceResolver.Resolve(env);
        var scaling = label.Task.Scaling(statistics);
        var settings = new ImageAdapterSettings(options.Rank, options.Alpha, options.Dropout, options.TargetModules, options.UseRsLora,
            options.ImageSize, scaling.Mean, scaling.Scale);
        using var channel = host.Start("LoraImageFineTuning");
        if (statistics.Skipped > 0)
        {
            MlNetHost.Info(channel, string.Create(CultureInfo.InvariantCulture,
                $"Skipped {statistics.Skipped} rows with a missing label in column '{options.LabelColumnName}'; training on {statistics.Rows} rows."));
        }

        // Training never merges (the base is shared with the other image models in this process); a private merged copy,
        // when LoraBaseModels.PrivateMergedCopies asks for one, is built at the end on the same base.
        bool mergedCopy = LoraBaseModels.PrivateMergedCopies;
        var baseModel = ImageBase.From(options.BaseModelPath, options.PreprocessModelPath);
        var model = LoraImageModel.Create(baseModel, device, label, settings, seed, mergedCopy: false);
        try
        {
            var trainer = new LoraTrainer<ImageRow>(env, channel, TrainingSettings.From(options), model, training, validation, seed);
            var best = trainer.Train(statistics.Rows);
            if (!mergedCopy)
            {
                LoraTrainer.RestoreBest(model, best);

                model.Model.eval();
                return new LoraImageTransformer(model, Columns, options.InferenceBatchSize);
            }

            var state = best ?? model.AdapterState();
            try
            {
                var rebuilt = LoraImageModel.Create(baseModel, device, label, settings, seed, mergedCopy);
                rebuilt.LoadAdapterState(state);
                rebuilt.Model.eval();
                model.Dispose();
                return new LoraImageTransformer(rebuilt, Columns, options.InferenceBatchSize);
            }
            finally
            {
                LoraTrainer.DisposeState(state);
            }
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Checks the input schema and returns it with the output columns added.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A column is missing or has the wrong type (the message names it, the expected and the actual type).</exception>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var columns = inputSchema.ToDictionary(c => c.Name);
        if (!columns.TryGetValue(options.LabelColumnName, out var label))
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"The input has no label column '{options.LabelColumnName}' (expected {LoraTask.ExpectedLabelTypes}).");
        }

        if (!columns.TryGetValue(options.ImageColumnName, out var image))
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"The input has no image column '{options.ImageColumnName}' (expected {ImageColumnReader.ExpectedTypes}).");
        }

        if (!ImageColumnReader.Accepts(image))
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"The image column '{options.ImageColumnName}' has type {image.ItemType}{(image.Kind == SchemaShape.Column.VectorKind.Scalar ? string.Empty : " vector")}; expected {ImageColumnReader.ExpectedTypes}.");
        }

        var task = LoraTask.FromLabelShape(label)
            ?? throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Label column '{options.LabelColumnName}' has type {label.ItemType}{(label.Kind == SchemaShape.Column.VectorKind.Scalar ? string.Empty : " vector")}; expected {LoraTask.ExpectedLabelTypes}.");
        task.AddOutputShape(columns, Columns, label);
        return new SchemaShape(columns.Values);
    }

    private (LabelInfo Label, ImageColumnReader Images) CheckTrainingSchema(DataViewSchema schema, string parameterName)
    {
        var label = schema.GetColumnOrNull(options.LabelColumnName)
            ?? throw new ArgumentOutOfRangeException(parameterName, $"The input has no label column '{options.LabelColumnName}' (expected {LoraTask.ExpectedLabelTypes}).");
        var info = LabelInfo.FromColumn(label, parameterName);
        return (info, ImageColumnReader.For(schema, options.ImageColumnName, options.ImageSize, parameterName));
    }

    private static LoraImageFineTuningOptions Validate(LoraImageFineTuningOptions source)
    {
        var o = source.Clone();
        (string Field, string Name)[] inputs =
        [
            (nameof(o.ImageColumnName), o.ImageColumnName),
            (nameof(o.LabelColumnName), o.LabelColumnName),
        ];
        (string Field, string Name)[] outputs =
        [
            (nameof(o.ScoreColumnName), o.ScoreColumnName),
            (nameof(o.PredictedLabelColumnName), o.PredictedLabelColumnName),
            (nameof(o.ProbabilityColumnName), o.ProbabilityColumnName),
        ];
        OptionChecks.Columns(inputs, outputs, "image or label");
        if (string.IsNullOrWhiteSpace(o.TargetModules))
        {
            throw new ArgumentException(@"TargetModules must be a regular expression over module paths, e.g. layer\d+\.\d+\.conv[12].", nameof(LoraImageFineTuningOptions.TargetModules));
        }

        try
        {
            _ = new Regex(o.TargetModules, RegexOptions.None, TimeSpan.FromSeconds(1));
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"TargetModules '{o.TargetModules}' is not a valid regular expression: {e.Message}", nameof(LoraImageFineTuningOptions.TargetModules), e);
        }

        if (o.ImageSize < 32 || o.ImageSize > 1024)
        {
            throw new ArgumentOutOfRangeException(nameof(LoraImageFineTuningOptions.ImageSize), o.ImageSize, "ImageSize must be between 32 and 1024 pixels (a multiple of 32 fits the network's stride).");
        }

        OptionChecks.Adapter(o.Rank, o.Alpha, o.Dropout);
        OptionChecks.Training(TrainingSettings.From(o), zeroEpochsAllowed: false);
        return o;
    }
}
