using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// Lifetime of the gradients that a custom autograd function's <c>backward</c> returns: the autograd engine takes its own
/// reference once <c>backward</c> has returned, so the managed handles must stay valid until then and are released at the
/// start of the next custom <c>backward</c> on the same thread. Per thread, because CUDA runs backward on the engine's
/// device threads, where no dispose scope is open.
/// </summary>
internal static class GradientHandOver
{
    [ThreadStatic]
    private static List<Tensor>? handedOver;

    /// <summary>Detaches <paramref name="gradient"/> from its dispose scope and keeps it until <see cref="ReleaseHandedOver"/>.</summary>
    /// <returns>The gradient, or null when it is null or invalid (no gradient).</returns>
    internal static Tensor HandOver(Tensor gradient)
    {
        if (gradient is null || gradient.IsInvalid)
        {
            return null!;
        }

        gradient.DetachFromDisposeScope();
        (handedOver ??= []).Add(gradient);
        return gradient;
    }

    /// <summary>Releases the handles handed over by the previous backward on this thread.</summary>
    internal static void ReleaseHandedOver()
    {
        if (handedOver is null)
        {
            return;
        }

        foreach (var gradient in handedOver)
        {
            gradient.Dispose();
        }

        handedOver.Clear();
    }
}
