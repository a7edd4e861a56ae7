using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

public static partial class lora
{
    /// <summary>
    /// Gradient (activation) checkpointing, as PyTorch's <c>torch.utils.checkpoint.checkpoint</c>: runs
    /// <paramref name="function"/> on <paramref name="input"/> without keeping its intermediate activations, and runs it
    /// again during <c>backward()</c> to compute the gradients. Trades one extra forward of the segment for the memory of
    /// its activations; with a frozen base (LoRA) the activations are most of the training memory.
    /// </summary>
    /// <param name="function">The segment, e.g. one transformer layer. It must be deterministic apart from dropout (the
    /// random-number state is replayed, so dropout draws the same masks in the recomputation) and must not change
    /// <paramref name="input"/> in place. It may read other tensors that need no gradient (an attention mask).</param>
    /// <param name="input">The segment's input.</param>
    /// <param name="parameters">The trainable parameters the segment uses (those with <c>requires_grad</c>; others are
    /// ignored). Their gradients are accumulated into <c>.grad</c> as usual. A trainable parameter that the segment uses
    /// but that is not listed here gets no gradient.</param>
    /// <returns>The segment's output. When gradients are off (<c>no_grad</c>, inference) or neither the input nor any
    /// parameter requires a gradient, this is simply <c>function(input)</c>.</returns>
    public static Tensor checkpoint(Func<Tensor, Tensor> function, Tensor input, IEnumerable<Tensor> parameters)
    {
        ArgumentNullException.ThrowIfNull(function);
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(parameters);
        var trainable = parameters.Where(p => p.requires_grad).ToArray();
        if (!is_grad_enabled() || (!input.requires_grad && trainable.Length == 0))
        {
            return function(input);
        }

        var args = new object[trainable.Length + 2];
        args[0] = function;
        args[1] = input;
        trainable.CopyTo(args, 2);
        return CheckpointFunction.apply(args);
    }
}
