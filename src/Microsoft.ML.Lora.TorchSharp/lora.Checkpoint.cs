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
    /// <paramref name="input"/> in place. Tensors it reads besides <paramref name="input"/> and the parameters must stay
    /// alive until <c>backward()</c> (or use the two-input overload, which keeps them).</param>
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
        return CheckpointInputs(inputs => function(inputs[0]), [input], parameters);
    }

    /// <summary>
    /// Gradient checkpointing of a segment with two inputs, e.g. a transformer layer's hidden state and attention mask.
    /// Pass every tensor the segment reads (other than parameters) as an input rather than capturing it in the lambda:
    /// inputs are kept for the recomputation, while a captured tensor may already be disposed by then.
    /// </summary>
    /// <param name="function">The segment; see <see cref="checkpoint(Func{Tensor, Tensor}, Tensor, IEnumerable{Tensor})"/>.</param>
    /// <param name="input1">First input (gradient computed if it requires one).</param>
    /// <param name="input2">Second input (gradient computed if it requires one).</param>
    /// <param name="parameters">The trainable parameters the segment uses.</param>
    /// <returns>The segment's output.</returns>
    public static Tensor checkpoint(Func<Tensor, Tensor, Tensor> function, Tensor input1, Tensor input2, IEnumerable<Tensor> parameters)
    {
        ArgumentNullException.ThrowIfNull(function);
        ArgumentNullException.ThrowIfNull(input1);
        ArgumentNullException.ThrowIfNull(input2);
        return CheckpointInputs(inputs => function(inputs[0], inputs[1]), [input1, input2], parameters);
    }

    /// <summary>
    /// Checkpointing of a segment with any number of inputs (the overloads above, and selective recomputation of a BERT
    /// layer's attention core, which has four: query, key, value and mask).
    /// </summary>
    internal static Tensor CheckpointInputs(Func<Tensor[], Tensor> function, Tensor[] inputs, IEnumerable<Tensor> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var trainable = parameters.Where(p => p.requires_grad).ToArray();
        if (!is_grad_enabled() || (!inputs.Any(t => t.requires_grad) && trainable.Length == 0))
        {
            return function(inputs);
        }

        var args = new object[2 + inputs.Length + trainable.Length];
        args[0] = function;
        args[1] = inputs.Length;
        inputs.CopyTo(args, 2);
        trainable.CopyTo(args, 2 + inputs.Length);
        return CheckpointFunction.apply(args);
    }
}
