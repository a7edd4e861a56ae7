using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace Microsoft.ML.Lora;

/// <summary>
/// The first half of a LoRA branch with dropout, <c>dropout(x)·Aᵀ</c>, as one autograd node that keeps the branch input x,
/// A and the dropout mask as one byte an element, and computes the dropped input again in backward. Autograd would keep a
/// float scale tensor and the dropped input, two full-size tensors per branch; x is the layer's input, which the layer's
/// other branches (query and value read the same hidden state) keep as the same tensor. Forward values, the mask and the
/// random-number state afterwards are those of <c>linear(dropout(x.to(A.dtype)), A)</c> on the CPU (see
/// <see cref="ByteMaskDropout"/>), and backward repeats autograd's operations, so gradients agree to rounding.
/// </summary>
/// <remarks>
/// Arguments of <c>apply</c>: x (any floating dtype), A (r × in_features, the factor dtype), the bool mask (drawn by the
/// caller, so that its handle can be released after <c>apply</c> while the node keeps the tensor), p.
/// </remarks>
internal sealed class LoraDropoutDownFunction : SingleTensorFunction<LoraDropoutDownFunction>
{
    private const string DropoutKey = "p";
    private const string InputRequiresGradKey = "x_requires_grad";
    private const string FactorRequiresGradKey = "a_requires_grad";

    public override string Name => "LoraDropoutDown";

    /// <summary>dropout(x)·Aᵀ with a mask drawn as libtorch's CPU dropout draws it; the node keeps x, A and a bool mask.</summary>
    /// <param name="input">The branch input x (not cast).</param>
    /// <param name="a">The factor A.</param>
    /// <param name="p">The dropout probability, in (0, 1).</param>
    /// <returns>[..., r] in A's dtype.</returns>
    internal static Tensor Apply(Tensor input, Tensor a, double p)
    {
        using var mask = ByteMaskDropout.DrawMask(input, p);
        return apply(input, a, mask, p);
    }

    public override Tensor forward(AutogradContext ctx, params object[] vars)
    {
        var input = (Tensor)vars[0];
        var a = (Tensor)vars[1];
        var mask = (Tensor)vars[2];
        double p = (double)vars[3];
        ctx.save_for_backward([input, a, mask]);
        ctx.save_data(DropoutKey, p);
        ctx.save_data(InputRequiresGradKey, input.requires_grad);
        ctx.save_data(FactorRequiresGradKey, a.requires_grad);
        using var scope = NewDisposeScope();
        using var dropped = Dropped(input, a.dtype, mask, p);
        return nn.functional.linear(dropped, a).MoveToOuterDisposeScope();
    }

    public override List<Tensor> backward(AutogradContext ctx, Tensor grad_output)
    {
        GradientHandOver.ReleaseHandedOver();
        double p = (double)ctx.get_data(DropoutKey);
        bool inputRequiresGrad = (bool)ctx.get_data(InputRequiresGradKey);
        bool factorRequiresGrad = (bool)ctx.get_data(FactorRequiresGradKey);
        var result = new List<Tensor>(4);
        using (var scope = NewDisposeScope())
        {
            var saved = ctx.get_saved_variables();
            var (input, a, mask) = (saved[0], saved[1], saved[2]);
            Tensor? gradInput = null;
            if (inputRequiresGrad)
            {
                // Autograd's order: the product's input gradient, then dropout's (times the scale, zero where dropped),
                // then the cast back to x's dtype.
                using var throughA = grad_output.matmul(a);
                using var scale = ByteMaskDropout.Scale(a.dtype, a.device, p);
                var masked = ByteMaskDropout.Apply(throughA, mask, scale);
                gradInput = masked.dtype == input.dtype ? masked : masked.to(input.dtype);
            }

            Tensor? gradFactor = null;
            if (factorRequiresGrad)
            {
                // As libtorch's linear backward folds the leading dimensions: (droppedᵀ·grad)ᵀ.
                using var dropped = Dropped(input, a.dtype, mask, p);
                using var flatDropped = dropped.reshape(-1, a.shape[1]);
                using var flatGrad = grad_output.reshape(-1, a.shape[0]);
                using var product = flatDropped.t().mm(flatGrad);
                gradFactor = product.t();
            }

            result.Add(gradInput is null ? null! : GradientHandOver.HandOver(gradInput));
            result.Add(gradFactor is null ? null! : GradientHandOver.HandOver(gradFactor));
            result.Add(null!);
            result.Add(null!);
        }

        // The engine's handle of the incoming gradient: released with the outgoing ones.
        GradientHandOver.HandOver(grad_output);
        return result;
    }

    private static Tensor Dropped(Tensor input, ScalarType factorDtype, Tensor mask, double p)
    {
        using var x = input.dtype == factorDtype ? input.alias() : input.to(factorDtype);
        using var scale = ByteMaskDropout.Scale(factorDtype, x.device, p);
        return ByteMaskDropout.Apply(x, mask, scale);
    }
}
