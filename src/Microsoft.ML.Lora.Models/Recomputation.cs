namespace Microsoft.ML.Lora.Models;

/// <summary>
/// What the encoder recomputes in the backward pass instead of keeping it from the forward pass
/// (<see cref="BertModel.Recomputation"/>, <c>LoraFineTuningOptions.Recomputation</c>): a trade of training memory for
/// step time. Every choice gives the same loss and gradients (dropout masks are replayed or drawn as libtorch draws
/// them; gradients agree to float rounding); only training with gradients on is affected, inference runs the layers as
/// they are.
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
    /// the sequence length, while its cost is a small share of the step. Two cheap element-wise recomputations come with
    /// it: the hidden dropout after each residual block keeps its mask as one byte an element instead of libtorch's float
    /// scale tensor, and a LoRA linear layer with dropout keeps its input (which query and value share) and a one-byte
    /// mask, and computes the dropped input again for A's gradient, instead of keeping the dropped input and a float scale
    /// tensor (both on the CPU; libtorch's CUDA dropout already keeps a byte mask). Frozen linear layers keep nothing of
    /// their input (libtorch saves a product's input only for its weight's gradient). The feed-forward activation (GELU)
    /// is not recomputed: the tensor GELU keeps is its input, the intermediate matrix product's output, which a
    /// recomputation would keep as its input too; and where GELU's output is kept (the input of a trainable
    /// <c>output.dense</c>), it is kept by that matrix product, so only recomputing the product as well would free it.
    /// </summary>
    Selective,

    /// <summary>
    /// Full gradient checkpointing (as Hugging Face's <c>gradient_checkpointing_enable()</c>): each encoder layer keeps
    /// only its input and is computed again as a whole in the backward pass — the least memory, about one extra encoder
    /// forward per step.
    /// </summary>
    Full,
}
