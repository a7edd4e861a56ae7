using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Engine.Tasks;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;

// Errors about an option name the LoraFineTuningOptions field as the parameter, as the user set it there.
#pragma warning disable CA2208

namespace Microsoft.ML.Lora;

/// <summary>
/// Fine-tunes a pretrained text encoder with LoRA on an <see cref="IDataView"/> and returns a <see cref="LoraTransformer"/>.
/// Create it with <c>mlContext.Transforms.LoraFineTune(...)</c>.
/// </summary>
/// <remarks>
/// <para>
/// Training streams rows through a cursor in batches (a seeded shuffle buffer, not the whole data set in memory), trains
/// only the LoRA matrices and the head with AdamW (linear warm-up and decay, gradient clipping, optional accumulation),
/// and is deterministic on the CPU for a given MLContext seed. Progress goes to <c>mlContext.Log</c> and
/// <see cref="LoraFineTuningOptions.Progress"/>; <c>mlContext.CancelExecution()</c> stops it with an
/// <see cref="OperationCanceledException"/>.
/// </para>
/// <para>
/// Device: with <c>mlContext.GpuDeviceId</c> unset the CPU is used; when set, that CUDA device is used if the torch runtime
/// has it, otherwise the CPU if <c>mlContext.FallbackToCpu</c> is true, else an error (as Microsoft.ML.TorchSharp).
/// On a CUDA device the frozen encoder runs in bfloat16 by default (<see cref="LoraFineTuningOptions.Precision"/>), batches
/// travel from pinned host memory without waiting for the device, and the host reads the device only at the progress
/// interval and at the end of each epoch.
/// </para>
/// </remarks>
public sealed class LoraFineTuningEstimator : IEstimator<LoraTransformer>
{
    private readonly IHostEnvironment env;
    private readonly LoraFineTuningOptions options;

    internal LoraFineTuningEstimator(IHostEnvironment env, LoraFineTuningOptions options)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(options);
        this.env = env;
        this.options = Validate(options);
    }

    private ColumnNames Columns => new(options.TextColumnName, options.TextPairColumnName, options.ScoreColumnName, options.PredictedLabelColumnName, options.ProbabilityColumnName);

    /// <summary>
    /// Trains the LoRA adapter and head on <paramref name="input"/>. Rows with a missing label (key 0, or a NaN or infinite
    /// regression label) are skipped and the log says how many; a null text reads as the empty string (ML.NET has no
    /// missing text). docs/RELIABILITY.md lists the behaviour for bad input.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A column is missing or has the wrong type (the message names it, the expected and the actual type).</exception>
    /// <exception cref="ArgumentException">No labelled rows, a single class, or a constant regression label.</exception>
    /// <exception cref="InvalidOperationException">
    /// The loss became NaN or infinite (checked at each progress report and epoch end; the message names the optimizer steps
    /// since the previous check), or a requested GPU is missing.
    /// </exception>
    /// <exception cref="OperationCanceledException"><c>mlContext.CancelExecution()</c> was called.</exception>
    public LoraTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var host = env.Register(nameof(LoraFineTuningEstimator));
        var label = CheckTrainingSchema(input.Schema, nameof(input));
        var training = new TrainingData(input, options.TextColumnName, options.TextPairColumnName, options.LabelColumnName, label);
        var statistics = training.ReadLabelStatistics();
        training.Validate(statistics, nameof(input));

        TrainingData? validation = null;
        if (options.ValidationSet is not null)
        {
            var validationLabel = CheckTrainingSchema(options.ValidationSet.Schema, nameof(LoraFineTuningOptions.ValidationSet));
            if (validationLabel.Task != label.Task || validationLabel.ClassCount != label.ClassCount)
            {
                throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.ValidationSet),
                    $"The validation label column '{options.LabelColumnName}' has type {options.ValidationSet.Schema[options.LabelColumnName].Type}; expected {input.Schema[options.LabelColumnName].Type} as in the training data.");
            }

            validation = new TrainingData(options.ValidationSet, options.TextColumnName, options.TextPairColumnName, options.LabelColumnName, label);
        }

        int seed = MlNetHost.GetSeed(env) ?? host.Rand.Next();
        var device = DeviceResolver.Resolve(env);
        var peft = options.InitialPeftAdapter is null ? null : PeftStart.ReadConfig(options.InitialPeftAdapter);
        var scaling = label.Task.Scaling(statistics);
        var settings = new AdapterSettings(peft?.r ?? options.Rank, peft?.lora_alpha ?? options.Alpha, options.Dropout,
            peft?.target_modules?.ToList() ?? options.TargetModules.ToList(), peft?.use_rslora ?? options.UseRsLora,
            options.Pooling, options.MaxSequenceLength, scaling.Mean, scaling.Scale, options.Truncation, options.InferenceWindowStride);

        using var channel = host.Start("LoraFineTuning");
        if (options.Precision == LoraPrecision.Auto && device.type == TorchSharp.DeviceType.CPU)
        {
            MlNetHost.Info(channel, CpuBFloat16.IsFaster
                ? $"Precision Auto: the frozen encoder runs in bfloat16 on this CPU ({CpuBFloat16.Reason}); set Precision = Float32 for float32."
                : $"Precision Auto: float32 on this CPU ({CpuBFloat16.Reason}).");
        }

        if (statistics.Skipped > 0)
        {
            MlNetHost.Info(channel, string.Create(CultureInfo.InvariantCulture,
                $"Skipped {statistics.Skipped} rows with a missing label in column '{options.LabelColumnName}' (key 0, or a NaN or infinite value); training on {statistics.Rows} rows."));
        }

        // Training never merges (the base may be shared with other models in this process); a private merged copy, when
        // LoraBaseModels.PrivateMergedCopies asks for one, is built at the end.
        bool mergedCopy = LoraBaseModels.PrivateMergedCopies;
        var model = LoraTextModel.Create(options.BaseModel, device, options.Precision, label, settings, seed, mergedCopy: false);
        try
        {
            int maxPositions = model.Model.Bert.Config.MaxPositionEmbeddings;
            if (options.MaxSequenceLength > maxPositions)
            {
                throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.MaxSequenceLength), options.MaxSequenceLength,
                    string.Create(CultureInfo.InvariantCulture, $"MaxSequenceLength must not exceed the base model's max_position_embeddings ({maxPositions})."));
            }

            if (options.InitialPeftAdapter is not null)
            {
                PeftStart.Load(model, options.InitialPeftAdapter, message => MlNetHost.Info(channel, message));
                if (options.MaxEpochs == 0 && !mergedCopy)
                {
                    model.Model.eval();
                    return new LoraTransformer(model, Columns, options.InferenceBatchSize) { GroupByLength = options.GroupByLength, Environment = env };
                }
            }

            // GradientCheckpointing = true is the older form of Recomputation = Full (Validate refuses it with Selective).
            model.Model.Bert.Recomputation = options.GradientCheckpointing ? Models.Recomputation.Full : options.Recomputation;
            // Rows are tokenized once (while their token ids fit TokenCacheBytes); the validation rows get what the
            // training rows left of that bound.
            bool hasPair = options.TextPairColumnName is not null;
            var trainingTokens = new TokenCache(training.Rows, row => model.Encode(row, hasPair), () => options.TokenCacheBytes,
                options.TokenCacheBytes, settings.MaxSequenceLength, settings.Truncation);
            var validationTokens = validation is null ? null : new TokenCache(validation.Rows, row => model.Encode(row, hasPair),
                () => options.TokenCacheBytes - trainingTokens.Bytes, options.TokenCacheBytes, settings.MaxSequenceLength, settings.Truncation);
            var trainer = new LoraTrainer<TokenizedRow>(env, channel, TrainingSettings.From(options), model, trainingTokens, validationTokens, seed);
            var best = trainer.Train(statistics.Rows);
            if (!mergedCopy)
            {
                // Validation ran the model in eval mode without merging (the model was built with merge_weights off), so
                // the trained weights are as the last step left them: the best epoch's adapter is copied into this model.
                LoraTrainer.RestoreBest(model, best);

                model.Model.eval();
                return new LoraTransformer(model, Columns, options.InferenceBatchSize) { GroupByLength = options.GroupByLength, Environment = env };
            }

            // A private merged copy (LoraBaseModels.PrivateMergedCopies): rebuild on the (shared) base with merging on,
            // exactly as loading a saved model does.
            var state = best ?? model.AdapterState();
            try
            {
                var rebuilt = LoraTextModel.Create(options.BaseModel, device, options.Precision, label, settings, seed, mergedCopy);
                rebuilt.LoadAdapterState(state);
                rebuilt.Model.eval();
                model.Dispose();
                return new LoraTransformer(rebuilt, Columns, options.InferenceBatchSize) { GroupByLength = options.GroupByLength, Environment = env };
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
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"The input has no label column '{options.LabelColumnName}' (expected a key type, Boolean or Single).");
        }

        CheckTextShape(inputSchema, options.TextColumnName, "text");
        if (options.TextPairColumnName is not null)
        {
            CheckTextShape(inputSchema, options.TextPairColumnName, "text pair");
        }

        var task = LoraTask.FromLabelShape(label)
            ?? throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Label column '{options.LabelColumnName}' has type {Describe(label)}; expected {LoraTask.ExpectedLabelTypes}.");
        task.AddOutputShape(columns, Columns, label);
        return new SchemaShape(columns.Values);
    }

    private LabelInfo CheckTrainingSchema(DataViewSchema schema, string parameterName)
    {
        var label = schema.GetColumnOrNull(options.LabelColumnName)
            ?? throw new ArgumentOutOfRangeException(parameterName, $"The input has no label column '{options.LabelColumnName}' (expected a key type, Boolean or Single).");
        var info = LabelInfo.FromColumn(label, parameterName);
        OutputSchema.CheckTextColumns(schema, Columns, parameterName);
        return info;
    }

    private static void CheckTextShape(SchemaShape schema, string name, string role)
    {
        var column = schema.FirstOrDefault(c => c.Name == name);
        if (column.Name is null)
        {
            throw new ArgumentOutOfRangeException(nameof(schema), $"The input has no {role} column '{name}' (expected type String).");
        }

        if (column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType is not TextDataViewType)
        {
            throw new ArgumentOutOfRangeException(nameof(schema), $"The {role} column '{name}' has type {Describe(column)}; expected String.");
        }
    }

    private static string Describe(SchemaShape.Column column) =>
        (column.IsKey ? "Key<" + column.ItemType + ">" : column.ItemType.ToString()) +
        (column.Kind == SchemaShape.Column.VectorKind.Scalar ? string.Empty : " vector");

    private static LoraFineTuningOptions Validate(LoraFineTuningOptions source)
    {
        var o = source.Clone();
        var inputs = new List<(string Field, string Name)>
        {
            (nameof(o.TextColumnName), o.TextColumnName),
            (nameof(o.LabelColumnName), o.LabelColumnName),
        };
        if (o.TextPairColumnName is not null)
        {
            inputs.Add((nameof(o.TextPairColumnName), o.TextPairColumnName));
        }

        (string Field, string Name)[] outputs =
        [
            (nameof(o.ScoreColumnName), o.ScoreColumnName),
            (nameof(o.PredictedLabelColumnName), o.PredictedLabelColumnName),
            (nameof(o.ProbabilityColumnName), o.ProbabilityColumnName),
        ];
        OptionChecks.Columns(inputs, outputs, "text, pair or label");
        if (o.BaseModel is null)
        {
            throw new ArgumentNullException(nameof(LoraFineTuningOptions.BaseModel), "BaseModel must name a pretrained model, e.g. PretrainedModel.MiniLmL6V2.");
        }

        if (o.TargetModules is null || o.TargetModules.Count == 0 || o.TargetModules.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException("TargetModules must list at least one module name (e.g. query, value) and no empty names.", nameof(LoraFineTuningOptions.TargetModules));
        }

        o.TargetModules = o.TargetModules.ToList();
        OptionChecks.Adapter(o.Rank, o.Alpha, o.Dropout);
        OptionChecks.Training(TrainingSettings.From(o), zeroEpochsAllowed: o.InitialPeftAdapter is not null);
        int minLength = o.TextPairColumnName is null ? 3 : 4;
        if (o.MaxSequenceLength < minLength)
        {
            throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.MaxSequenceLength), o.MaxSequenceLength,
                string.Create(CultureInfo.InvariantCulture, $"MaxSequenceLength must be at least {minLength} (special tokens plus text)."));
        }

        if (!Enum.IsDefined(o.Precision))
        {
            throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.Precision), o.Precision, "Precision must be Auto, Float32 or BFloat16.");
        }

        if (!Enum.IsDefined(o.Truncation))
        {
            throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.Truncation), o.Truncation, "Truncation must be Head or HeadTail.");
        }

        if (o.InferenceWindowStride < 0 || o.InferenceWindowStride > o.MaxSequenceLength - 2)
        {
            throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.InferenceWindowStride), o.InferenceWindowStride,
                string.Create(CultureInfo.InvariantCulture, $"InferenceWindowStride must be 0 (no windows) or from 1 to MaxSequenceLength - 2 ({o.MaxSequenceLength - 2}) word pieces."));
        }

        if (o.InferenceWindowStride > 0 && o.TextPairColumnName is not null)
        {
            throw new ArgumentException(
                $"InferenceWindowStride works on single texts; with TextPairColumnName '{o.TextPairColumnName}' set it must be 0 (pairs are truncated by Truncation).",
                nameof(LoraFineTuningOptions.InferenceWindowStride));
        }

        if (!Enum.IsDefined(o.Recomputation))
        {
            throw new ArgumentOutOfRangeException(nameof(LoraFineTuningOptions.Recomputation), o.Recomputation, "Recomputation must be None, Selective or Full.");
        }

        if (o.GradientCheckpointing && o.Recomputation == Models.Recomputation.Selective)
        {
            throw new ArgumentException(
                "GradientCheckpointing = true asks for full recomputation and Recomputation = Selective for selective recomputation; set one of them.",
                nameof(LoraFineTuningOptions.Recomputation));
        }

        return o;
    }
}
