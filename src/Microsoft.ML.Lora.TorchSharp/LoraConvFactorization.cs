namespace Microsoft.ML.Lora;

/// <summary>
/// How a LoRA convolution factors its update ΔW (shaped like the kernel W: out × in/groups × k₀ × k₁ …). The two published
/// implementations differ, so the same arguments (r, kernel size) mean different models, and their checkpoints differ.
/// </summary>
public enum LoraConvFactorization
{
    /// <summary>
    /// Microsoft's loralib (<c>loralib.Conv2d</c>, the LoRA paper's reference code): two matrices whose product is reshaped into
    /// the kernel, ΔW = (lora_B · lora_A).view(W.shape)·scaling, with lora_A [r·k₀, in·k₁⋯] and lora_B [out/groups·k₀, r·k₀].
    /// The rank of that product can reach r·k₀, not r. For a square 2-D kernel the shapes are loralib's
    /// ([r·k, in·k], [out/groups·k, r·k]) and its checkpoints load as they are. loralib itself cannot build a 1-D or 3-D
    /// layer with a kernel larger than 1 (its issue #115: [r·k, in·k] only fits k×k kernels); here the first kernel
    /// dimension plays k's role and the others join the input side, which equals loralib wherever loralib works.
    /// </summary>
    Loralib,

    /// <summary>
    /// Hugging Face PEFT (<c>peft.tuners.lora.Conv2d</c>): lora_A is a convolution with the base layer's kernel, stride,
    /// padding, dilation and groups and r output channels (r × in/groups × k…), lora_B a 1×…×1 convolution back to the output
    /// channels (out × r/groups × 1…); forward is conv1x1(conv(x, A), B)·scaling, so ΔW has rank at most r (per group). Used
    /// by injection and PEFT adapter files, as PEFT does; r must be divisible by groups.
    /// </summary>
    Peft,
}
