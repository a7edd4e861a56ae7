using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The shape of the adapted model: what a model file must record to rebuild it on top of the base (and how it reads long
/// texts: the truncation strategy, and the inference window stride, 0 for none).
/// </summary>
internal sealed record AdapterSettings(
    int Rank,
    double Alpha,
    double Dropout,
    IReadOnlyList<string> TargetModules,
    bool UseRsLora,
    PoolingMode Pooling,
    int MaxSequenceLength,
    float LabelMean,
    float LabelScale,
    TruncationStrategy Truncation = TruncationStrategy.Head,
    int WindowStride = 0);
