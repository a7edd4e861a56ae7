using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The training loop: streamed, shuffled batches; AdamW on the LoRA and head parameters only; linear warm-up and decay;
/// gradient clipping and accumulation; progress, cancellation, divergence checks and optional early stopping.
/// </summary>
/// <remarks>
/// The loop knows neither the task nor the model family: the loss and accuracy come from the task
/// (<see cref="LabelInfo.Task"/>), the batches and the forward pass from the family's model (<see cref="ILoraModel{TRow}"/>).
/// </remarks>
/// <typeparam name="TRow">The model family's training row.</typeparam>
internal sealed class LoraTrainer<TRow>
    where TRow : ILabeledRow
{
    private readonly IHostEnvironment env;
    private readonly IChannel channel;
    private readonly TrainingSettings options;
    private readonly ILoraModel<TRow> model;
    private readonly ITrainingRows<TRow> data;
    private readonly ITrainingRows<TRow>? validation;
    private readonly int seed;

    public LoraTrainer(IHostEnvironment env, IChannel channel, TrainingSettings options, ILoraModel<TRow> model, ITrainingRows<TRow> data, ITrainingRows<TRow>? validation, int seed)
    {
        this.env = env;
        this.channel = channel;
        this.options = options;
        this.model = model;
        this.data = data;
        this.validation = validation;
        this.seed = seed;
    }

    /// <summary>Whether validation evaluated the model in eval mode (which merges and unmerges LoRA weights into the base).</summary>
    public bool UsedEvalMode { get; private set; }

    /// <summary>Optimizer steps taken.</summary>
    public long Steps { get; private set; }

    /// <summary>Mean training loss of each epoch.</summary>
    public List<double> EpochLosses { get; } = [];

    /// <summary>The dtypes of the AdamW state tensors (exp_avg, exp_avg_sq) after training.</summary>
    public IReadOnlySet<ScalarType> OptimizerStateDtypes { get; private set; } = new HashSet<ScalarType>();

    /// <summary>Trains; returns the adapter state to keep (the best epoch's when validating), or null to keep the model as it is.</summary>
    public SortedDictionary<string, Tensor>? Train(long rowCount)
    {
        int batchesPerEpoch = (int)Math.Min(int.MaxValue, (rowCount + options.BatchSize - 1) / options.BatchSize);
        long stepsPerEpoch = (batchesPerEpoch + options.GradientAccumulationSteps - 1) / options.GradientAccumulationSteps;
        long totalSteps = stepsPerEpoch * options.MaxEpochs;
        long warmupSteps = options.WarmupRatio > 0 ? Math.Max(1, (long)Math.Round(options.WarmupRatio * totalSteps)) : 0;

        var parameters = model.TrainableParameters().ToList();
        using var optimizer = torch.optim.AdamW(parameters, options.LearningRate, weight_decay: options.WeightDecay);
        var stopwatch = Stopwatch.StartNew();
        long rowsSeen = 0;

        // Loss sums stay on the device: reading a loss (item) waits for the device to finish, so the host reads them only
        // at the progress interval and at the end of an epoch, not every batch. float64, as the host sums were.
        using var intervalLoss = torch.zeros(1, ScalarType.Float64, model.Device);
        using var epochLoss = torch.zeros(1, ScalarType.Float64, model.Device);
        long intervalRows = 0;
        long intervalFirstStep = 1;
        double bestValidation = double.PositiveInfinity;
        SortedDictionary<string, Tensor>? best = null;
        int epochsWithoutImprovement = 0;
        MlNetHost.Info(channel, string.Create(CultureInfo.InvariantCulture,
            $"LoRA fine-tuning: {rowCount} rows, {options.MaxEpochs} epochs, {totalSteps} optimizer steps ({warmupSteps} warm-up), batch {options.BatchSize} x {options.GradientAccumulationSteps}, device {model.Device}, encoder {model.EncoderDtype} (LoRA, head and optimizer state Float32), trainable parameters {model.TrainableParameterCount} of {model.TotalParameterCount}, adapted modules {model.AdaptedModules.Count}."));

        for (int epoch = 1; epoch <= options.MaxEpochs; epoch++)
        {
            CheckCanceled();
            model.Module.train();
            var rows = data.Rows();
            if (options.Shuffle)
            {
                // Not HashCode.Combine: it is randomised per process, and the order must be the same in every run.
                rows = ShuffleBuffer.Shuffle(rows, options.ShuffleBufferSize, new Random(unchecked((seed * 1_000_003) + epoch)));
            }

            epochLoss.zero_();
            long epochRows = 0;
            int pending = 0;
            double learningRate = options.LearningRate;
            optimizer.zero_grad();
            var batches = model.TrainingBatches(rows, options.BatchSize, options.GroupByLength, new Random(unchecked((seed * 1_000_003) + epoch + 0x5bd1e995)));
            foreach (var batch in batches)
            {
                CheckCanceled();
                ForwardBackward(batch, intervalLoss, epochLoss);
                epochRows += batch.Length;
                intervalRows += batch.Length;
                rowsSeen += batch.Length;
                if (++pending < options.GradientAccumulationSteps)
                {
                    continue;
                }

                learningRate = Step(optimizer, parameters, totalSteps, warmupSteps);
                pending = 0;
                if (Steps % options.ProgressInterval == 0)
                {
                    double loss = ReadLoss(intervalLoss, intervalRows, epoch, intervalFirstStep, learningRate);
                    Report(epoch, totalSteps, loss, learningRate, rowsSeen, stopwatch.Elapsed, null, null);
                    intervalLoss.zero_();
                    intervalRows = 0;
                    intervalFirstStep = Steps + 1;
                }
            }

            if (pending > 0)
            {
                learningRate = Step(optimizer, parameters, totalSteps, warmupSteps);
            }

            if (epoch == 1)
            {
                // What the family's rows have to say after their first complete pass (text: truncation and token cache).
                foreach (string message in data.FirstPassSummary())
                {
                    MlNetHost.Info(channel, message);
                }
            }

            double lastIntervalLoss = intervalRows > 0 ? ReadLoss(intervalLoss, intervalRows, epoch, intervalFirstStep, learningRate) : double.NaN;
            EpochLosses.Add(epochRows > 0 ? ReadLoss(epochLoss, epochRows, epoch, intervalFirstStep, learningRate) : double.NaN);
            var (validationLoss, validationAccuracy) = validation is null ? (null, null) : Validate();
            Report(epoch, totalSteps, intervalRows > 0 ? lastIntervalLoss : EpochLosses[^1], learningRate, rowsSeen, stopwatch.Elapsed, validationLoss, validationAccuracy);
            intervalLoss.zero_();
            intervalRows = 0;
            intervalFirstStep = Steps + 1;
            MlNetHost.Info(channel, string.Create(CultureInfo.InvariantCulture,
                $"Epoch {epoch}/{options.MaxEpochs}: training loss {EpochLosses[^1]:F4}{(validationLoss is null ? string.Empty : $", validation loss {validationLoss:F4}")}{(validationAccuracy is null ? string.Empty : $", validation accuracy {validationAccuracy:F4}")}, {stopwatch.Elapsed.TotalSeconds:F1} s."));

            if (validationLoss is double v)
            {
                if (v < bestValidation)
                {
                    bestValidation = v;
                    LoraTrainer.DisposeState(best);
                    best = model.AdapterState();
                    epochsWithoutImprovement = 0;
                }
                else if (++epochsWithoutImprovement >= options.EarlyStoppingPatience)
                {
                    MlNetHost.Info(channel, string.Create(CultureInfo.InvariantCulture,
                        $"Early stopping after epoch {epoch}: no validation improvement for {epochsWithoutImprovement} epochs; keeping the adapter with validation loss {bestValidation:F4}."));
                    break;
                }
            }
        }

        OptimizerStateDtypes = optimizer.state_dict().State.OfType<TorchSharp.Modules.AdamW.State>()
            .SelectMany(state => new[] { state.exp_avg, state.exp_avg_sq }).Where(t => t is not null).Select(t => t.dtype).ToHashSet();
        return best;
    }

    /// <summary>Mean loss from a device-side sum (one device-to-host read); throws if training diverged since step <paramref name="firstStep"/>.</summary>
    private double ReadLoss(Tensor sum, long rows, int epoch, long firstStep, double learningRate)
    {
        double loss = sum.item<double>() / rows;
        if (!double.IsFinite(loss))
        {
            string steps = firstStep >= Steps ? $"optimizer step {Math.Max(firstStep, Steps)}" : $"optimizer steps {firstStep}-{Steps}";
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"LoRA fine-tuning diverged: the training loss is {loss} at epoch {epoch}, {steps} (learning rate {learningRate:G3}). " +
                $"Lower {nameof(LoraFineTuningOptions.LearningRate)}, keep {nameof(LoraFineTuningOptions.ClipNorm)} on, or check label column '{options.LabelColumnName}' for extreme values."));
        }

        return loss;
    }

    private void CheckCanceled()
    {
        MlNetHost.CheckAlive(env);
        options.CancellationToken.ThrowIfCancellationRequested();
    }

    /// <summary>Forward and backward of one batch; adds loss × rows to each of <paramref name="sums"/> on the device (no host read).</summary>
    private void ForwardBackward(TRow[] batch, params Tensor[] sums)
    {
        using var scope = torch.NewDisposeScope();
        var output = model.Forward(batch);
        var loss = Loss(output, batch);
        (loss / options.GradientAccumulationSteps).backward();
        var weighted = loss.detach().to(ScalarType.Float64) * batch.Length;
        foreach (var sum in sums)
        {
            sum.add_(weighted);
        }
    }

    private Tensor Loss(Tensor output, TRow[] batch) => model.Label.Task.Loss(output, batch, model.Scaling, model.Device);

    private double Step(torch.optim.Optimizer optimizer, List<TorchSharp.Modules.Parameter> parameters, long totalSteps, long warmupSteps)
    {
        Steps++;
        double lr = LoraTrainer.LearningRateAt(Steps, totalSteps, warmupSteps, options.LearningRate);
        foreach (var group in optimizer.ParamGroups)
        {
            group.LearningRate = lr;
        }

        if (options.ClipNorm > 0)
        {
            LoraTrainer.ClipGradientNorm(parameters, options.ClipNorm);
        }

        optimizer.step();
        optimizer.zero_grad();
        return lr;
    }

    /// <summary>Mean validation loss, and for classification the fraction of correctly predicted rows, from one forward pass per batch.</summary>
    private (double? Loss, double? Accuracy) Validate()
    {
        UsedEvalMode = true;
        model.Module.eval();
        using var sum = torch.zeros(1, ScalarType.Float64, model.Device);
        long count = 0;
        using var correct = torch.zeros(1, ScalarType.Int64, model.Device);
        foreach (var batch in validation!.Rows().Chunk(options.InferenceBatchSize))
        {
            CheckCanceled();
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var output = model.Forward(batch);
            sum.add_(Loss(output, batch).to(ScalarType.Float64) * batch.Length);
            count += batch.Length;
            if (model.Label.Task.IsClassification)
            {
                correct.add_(model.Label.Task.CorrectPredictions(output, batch, model.Device));
            }
        }

        model.Module.train();
        double? accuracy = !model.Label.Task.IsClassification ? null : count > 0 ? correct.item<long>() / (double)count : double.NaN;
        return (count > 0 ? sum.item<double>() / count : double.NaN, accuracy);
    }

    private void Report(int epoch, long totalSteps, double loss, double learningRate, long rowsSeen, TimeSpan elapsed, double? validationLoss, double? validationAccuracy)
    {
        double rowsPerSecond = rowsSeen / Math.Max(elapsed.TotalSeconds, 1e-9);
        var remaining = Steps > 0 ? TimeSpan.FromSeconds(elapsed.TotalSeconds / Steps * Math.Max(0, totalSteps - Steps)) : TimeSpan.Zero;
        var report = new LoraTrainingProgress(epoch, options.MaxEpochs, Steps, totalSteps, loss, learningRate, rowsPerSecond, elapsed, remaining, validationLoss, validationAccuracy);
        MlNetHost.Info(channel, string.Create(CultureInfo.InvariantCulture,
            $"epoch {epoch}/{options.MaxEpochs} step {Steps}/{totalSteps} loss {loss:F4} lr {learningRate:G3} {rowsPerSecond:F1} rows/s ETA {remaining:hh\\:mm\\:ss}"));
        options.Progress?.Report(report);
    }
}
