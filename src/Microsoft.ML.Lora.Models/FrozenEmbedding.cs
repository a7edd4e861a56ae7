using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// A frozen lookup table (the forward of <c>nn.Embedding</c> in evaluation, without its training options) whose
/// <c>weight</c> is set from outside: the embeddings of a <see cref="BertModel.ShareWeights"/> tree, which alias the shared
/// base. TorchSharp's native <c>nn.Embedding</c> allocates and keeps a CPU weight of its full size even when built on the
/// meta device or from a pretrained tensor (measured: +45 MiB per MiniLM tree), which is what sharing must avoid.
/// </summary>
internal sealed class FrozenEmbedding : nn.Module<Tensor, Tensor>
{
    private Parameter weight_;

    /// <summary>Creates the table with a meta-device (shape only) weight of [<paramref name="count"/>, <paramref name="dimension"/>].</summary>
    public FrozenEmbedding(long count, long dimension) : base("Embedding")
    {
        weight_ = new Parameter(empty(count, dimension, device: META), requires_grad: false);
        register_parameter("weight", weight_);
    }

    /// <summary>The table [count, dimension]; set it to a tensor of the same shape (not copied).</summary>
    public Parameter weight
    {
        get => weight_;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (!value.shape.SequenceEqual(weight_.shape))
            {
                throw new ArgumentException($"The weight must have shape [{string.Join(", ", weight_.shape)}].", nameof(value));
            }

            var old = weight_;
            weight_ = value;
            ConditionallyRegisterParameter("weight", weight_);
            old.Dispose();
        }
    }

    /// <summary>Looks up the rows of <paramref name="input"/> (int64 ids of any shape): shape [..input, dimension].</summary>
    public override Tensor forward(Tensor input)
    {
        using var flat = input.reshape(-1);
        using var rows = weight_.index_select(0, flat);
        return rows.reshape([.. input.shape, weight_.shape[1]]);
    }
}
