namespace Microsoft.ML.Lora.Models;

/// <summary>
/// What the encoder recomputes in the backward pass instead of keeping it from the forward pass
/// (<see cref="BertModel.Recomputation"/>, <c>LoraFineTuningOptions.Recomputation</c>): a trade of training memory for
/// step time. Every choice gives the same loss and gradients (dropout masks are replayed); only training with gradients
/// on is affected, inference runs the layers as they are.
/// </summary>
public enum Recomputation
{
    /// <summary>Keep every activation the backward pass needs: the fastest step, the most memory.</summary>
    None,

    /// <summary>
    /// Selective recomputation (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    /// Models"): the matrix-product outputs are kept, and the attention core of each layer — scores QKᵀ, mask,
    /// softmax, dropout and the product with V — is computed again in the backward pass. Its saved activations are
    /// several [batch, heads, length, length] tensors per layer, the part of the memory that grows with the square of
    /// the sequence length, while its cost is a small share of the step. The feed-forward activation (GELU) is not
    /// recomputed: with a frozen base the only tensor it keeps is the input of GELU, which is the output of the
    /// intermediate matrix product and would be kept by a recomputation as well.
    /// </summary>
    Selective,

    /// <summary>
    /// Full gradient checkpointing (as Hugging Face's <c>gradient_checkpointing_enable()</c>): each encoder layer keeps
    /// only its input and is computed again as a whole in the backward pass — the least memory, about one extra encoder
    /// forward per step.
    /// </summary>
    Full,
}
