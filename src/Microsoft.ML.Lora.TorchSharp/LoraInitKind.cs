namespace Microsoft.ML.Lora;

/// <summary>How the LoRA factors start (PEFT's <c>init_lora_weights</c>).</summary>
internal enum LoraInitKind
{
    /// <summary>"true": A kaiming-uniform(a=√5), B zeros (Embedding: A zeros, B normal). ΔW starts at 0.</summary>
    Default,

    /// <summary>"gaussian": A normal with std 1/r, B zeros (Embedding as Default). ΔW starts at 0.</summary>
    Gaussian,

    /// <summary>"false": both factors random, so ΔW starts non-zero (for tests and debugging, as PEFT).</summary>
    Random,
}
