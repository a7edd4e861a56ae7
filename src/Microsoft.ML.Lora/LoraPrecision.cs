namespace Microsoft.ML.Lora;

/// <summary>
/// Numeric precision of LoRA fine-tuning (<see cref="LoraFineTuningOptions.Precision"/>): the dtype of the frozen encoder.
/// The LoRA factors, the classification head, the loss and the AdamW state are float32 in every mode.
/// </summary>
/// <remarks>
/// There is no float16 mode: float16's range (largest value 65504, smallest normal 6e-5) makes gradients through a frozen
/// encoder underflow without dynamic loss scaling, and loss scaling has to decide on the host, every step, whether
/// gradients overflowed (a device-to-host synchronisation per step). bfloat16 has float32's range, so it needs no loss
/// scaling. GPUs without fast bfloat16 (compute capability below 8.0, e.g. T4, V100) should use <see cref="Float32"/>.
/// </remarks>
#pragma warning disable CA1720 // Float32, BFloat16: the names of TorchSharp's ScalarType values, on purpose.
public enum LoraPrecision
{
    /// <summary>
    /// <see cref="BFloat16"/> on a CUDA device that runs bfloat16 matrix products, and on a CPU with native bfloat16
    /// instructions (<c>avx512_bf16</c> or AMX, oneDNN not capped below them by <c>ONEDNN_MAX_CPU_ISA</c>) where a
    /// 512² bfloat16 matrix product is measured at least 1.3× as fast as float32 (a probe of a few milliseconds, once per
    /// process); <see cref="Float32"/> everywhere else. Measured on an AMD EPYC (Zen 5, <c>avx512_bf16</c>): the sample
    /// trained 1.93× and scored 2.39× faster in bfloat16 at the same held-out accuracy (0.919 vs 0.917); on CPUs
    /// without native bfloat16 (AVX2 only) the bfloat16 encoder is 2–15× slower (bench/README.md). Set the environment
    /// variable <c>MICROSOFT_ML_LORA_CPU_AUTO_FLOAT32=1</c> to keep Auto float32 on every CPU (the same scores on every
    /// machine of a mixed fleet), or choose <see cref="Float32"/> for one pipeline.
    /// </summary>
    Auto,

    /// <summary>Everything in float32.</summary>
    Float32,

    /// <summary>
    /// The frozen encoder (embeddings, attention, feed-forward, LayerNorm) in bfloat16; each LoRA branch widens its input
    /// to float32 and runs in float32, and its output is added to the bfloat16 base output; the pooled vector is widened
    /// to float32 for the head. LoRA weights are not merged into the bfloat16 base for inference (rounding ΔW into
    /// bfloat16 weights would lose most of its bits), so every forward runs the LoRA branches. Works on the CPU too when
    /// chosen explicitly (slow: for tests).
    /// </summary>
    BFloat16,
}
#pragma warning restore CA1720
