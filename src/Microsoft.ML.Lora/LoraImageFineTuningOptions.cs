using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models.Vision;

namespace Microsoft.ML.Lora;

/// <summary>
/// Options of <see cref="LoraImageFineTuningEstimator"/> (<c>mlContext.Transforms.LoraFineTuneImage(options)</c>): which
/// columns to read and write, which pretrained image model to adapt, the image size, the LoRA adapter's shape and the
/// training schedule.
/// </summary>
/// <remarks>
/// <para>
/// The image column holds images as ML.NET users have them: <see cref="MLImage"/> (from <c>LoadImages</c>, or in memory)
/// or the encoded bytes of an image file (from <c>LoadRawImageBytes</c>, or a <c>byte[]</c> field). Inside, each image is
/// decoded, resized to <see cref="ImageSize"/> × <see cref="ImageSize"/> (bilinear with antialiasing, no cropping), grey
/// becomes RGB with three equal channels, and the base's own normalisation is applied (for ML.NET's ResNet-18 the mean
/// image its <c>ResNetPreprocess.onnx</c> subtracts).
/// </para>
/// <para>
/// The label column decides the task as for text: a key type (image classification, as ML.NET's
/// <c>MulticlassClassification.Trainers.ImageClassification</c>) trains a multiclass classifier; <see cref="bool"/> and
/// <see cref="float"/> labels train a binary classifier and a regression model.
/// </para>
/// <para>
/// BatchNorm layers keep the base's stored statistics and their parameters frozen, in training too (PEFT users do the
/// same by calling <c>model.eval()</c> on the BatchNorm layers or freezing them): LoRA keeps the base fixed, batch
/// statistics of small fine-tuning batches would change the base's running buffers and make a row's prediction depend on
/// the other rows of its batch, and with fixed statistics a BatchNorm is a per-channel affine map that leaves merging
/// the LoRA update into the convolution exact.
/// </para>
/// </remarks>
#pragma warning disable CA1051 // Public fields: the ML.NET options style (object initialisers, as Microsoft.ML.TorchSharp's options).
public sealed class LoraImageFineTuningOptions
{
    /// <summary>Label column: key type (multiclass), <see cref="bool"/> (binary) or <see cref="float"/> (regression). Default "Label".</summary>
    public string LabelColumnName = DefaultColumnNames.Label;

    /// <summary>Image column: <see cref="MLImage"/> or a vector of <see cref="byte"/> holding an encoded image. Default "Image".</summary>
    public string ImageColumnName = "Image";

    /// <summary>Output score column. Default "Score". Multiclass: a vector of class probabilities.</summary>
    public string ScoreColumnName = DefaultColumnNames.Score;

    /// <summary>Output predicted label column (classification only): a key with the label's key values (multiclass) or a <see cref="bool"/>. Default "PredictedLabel".</summary>
    public string PredictedLabelColumnName = DefaultColumnNames.PredictedLabel;

    /// <summary>Output probability column (binary classification only). Default "Probability".</summary>
    public string ProbabilityColumnName = DefaultColumnNames.Probability;

    /// <summary>
    /// The base: a ResNet with basic blocks as an ONNX file. Default null: ML.NET's ResNet-18
    /// (<see cref="DnnImageModels.ResNet18Path"/>, the file the NuGet package <c>Microsoft.ML.DnnImageFeaturizer.ResNet18</c>
    /// copies into the application's folder). The model file records the path and the base's SHA-256, never its weights.
    /// </summary>
    public string? BaseModelPath;

    /// <summary>
    /// The base's preprocessing graph (channel order and mean image). Default null: <c>ResNetPrepOnnx/ResNetPreprocess.onnx</c>
    /// beside the base's folder, as the DnnImageFeaturizer package lays them out.
    /// </summary>
    public string? PreprocessModelPath;

    /// <summary>
    /// Side of the square images the network sees. Default 224 (the base's native size). A smaller size is faster (cost
    /// grows with the pixel count) and works because the network pools its last feature map globally; ML.NET's ONNX graph
    /// ends in a fixed 7×7 average that equals the global pool only at 224. Use a multiple of 32.
    /// </summary>
    public int ImageSize = 224;

    /// <summary>LoRA rank r. Default 8.</summary>
    public int Rank = 8;

    /// <summary>LoRA alpha: the update is scaled by alpha / r (or alpha / √r with <see cref="UseRsLora"/>). Default 16.</summary>
    public double Alpha = 16;

    /// <summary>Dropout on the LoRA branch's input. Default 0.</summary>
    public double Dropout;

    /// <summary>
    /// The convolutions that get LoRA: a regular expression that must match a whole module path (PEFT's string form of
    /// <c>target_modules</c>; paths are torchvision's: <c>conv1</c>, <c>layer1.0.conv1</c>, <c>layer2.0.downsample.0</c>).
    /// Default <c>layer\d+\.\d+\.conv[12]</c>: both 3×3 convolutions of every residual block, not the 7×7 stem (3 input
    /// channels: little to adapt) nor the 1×1 shortcut convolutions.
    /// </summary>
    public string TargetModules = DefaultTargetModules;

    /// <summary>The default of <see cref="TargetModules"/>.</summary>
    public const string DefaultTargetModules = @"layer\d+\.\d+\.conv[12]";

    /// <summary>Scale the update by alpha / √r (rsLoRA). Default false.</summary>
    public bool UseRsLora;

    /// <summary>Images per optimizer step. Default 32.</summary>
    public int BatchSize = 32;

    /// <summary>Passes over the training data. Default 4.</summary>
    public int MaxEpochs = 4;

    /// <summary>Peak AdamW learning rate (linear warm-up, then linear decay to zero). Default 1e-3.</summary>
    public double LearningRate = 1e-3;

    /// <summary>AdamW weight decay. Default 0.01.</summary>
    public double WeightDecay = 0.01;

    /// <summary>Fraction of the optimizer steps used for linear warm-up. Default 0.06.</summary>
    public double WarmupRatio = 0.06;

    /// <summary>Batches whose gradients are summed before each optimizer step. Default 1.</summary>
    public int GradientAccumulationSteps = 1;

    /// <summary>Clips the global gradient norm to this value; 0 turns clipping off. Default 1.</summary>
    public double ClipNorm = 1.0;

    /// <summary>Shuffles rows each epoch through a seeded buffer of <see cref="ShuffleBufferSize"/> rows. Default true.</summary>
    public bool Shuffle = true;

    /// <summary>Rows held by the shuffle buffer (each is a decoded image: 3 × ImageSize² bytes, 150 KB at 224). Default 1024.</summary>
    public int ShuffleBufferSize = 1024;

    /// <summary>
    /// Optional validation data with the same columns: the validation loss (and accuracy) is computed after each epoch,
    /// the adapter of the best epoch is kept, and training stops after <see cref="EarlyStoppingPatience"/> epochs without improvement.
    /// </summary>
    public IDataView? ValidationSet;

    /// <summary>Epochs without validation improvement before training stops (only with <see cref="ValidationSet"/>). Default 2.</summary>
    public int EarlyStoppingPatience = 2;

    /// <summary>Images per forward pass in <c>Transform</c>. Default 32.</summary>
    public int InferenceBatchSize = 32;

    /// <summary>Optimizer steps between progress reports. Default 10.</summary>
    public int ProgressInterval = 10;

    /// <summary>Cancels training (an <see cref="OperationCanceledException"/> from <c>Fit</c> within one batch).</summary>
    public CancellationToken CancellationToken;

    /// <summary>Optional receiver of training progress, in addition to <c>mlContext.Log</c>.</summary>
    public IProgress<LoraTrainingProgress>? Progress;

    internal LoraImageFineTuningOptions Clone() => (LoraImageFineTuningOptions)MemberwiseClone();
}
#pragma warning restore CA1051
