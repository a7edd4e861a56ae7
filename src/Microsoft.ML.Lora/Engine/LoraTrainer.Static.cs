using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>The training loop's helpers that do not depend on the model family (see <see cref="LoraTrainer{TRow}"/>).</summary>
internal static class LoraTrainer
{
    /// <summary>
    /// Scales the gradients so that their global L2 norm is at most <paramref name="maxNorm"/>, as
    /// <c>torch.nn.utils.clip_grad_norm_</c> (coefficient maxNorm / (norm + 1e-6), at most 1), but on the device: TorchSharp's
    /// clip_grad_norm_ returns the norm as a double, a device-to-host read every optimizer step.
    /// </summary>
    internal static void ClipGradientNorm(IReadOnlyList<TorchSharp.Modules.Parameter> parameters, double maxNorm)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var grads = parameters.Select(p => p.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0)
        {
            return;
        }

        var norms = stack(grads.Select(g => linalg.vector_norm(g).to(ScalarType.Float32)));
        var coefficient = (maxNorm / (linalg.vector_norm(norms) + 1e-6)).clamp_max(1.0);
        foreach (var grad in grads)
        {
            grad.mul_(coefficient.to(grad.dtype));
        }
    }

    /// <summary>Linear warm-up to the peak over <paramref name="warmupSteps"/> steps, then linear decay to 0 after the last step (1-based steps).</summary>
    internal static double LearningRateAt(long step, long totalSteps, long warmupSteps, double peak)
    {
        if (step <= warmupSteps)
        {
            return peak * step / warmupSteps;
        }

        return peak * Math.Max(0, totalSteps - step + 1) / Math.Max(1, totalSteps - warmupSteps);
    }

    /// <summary>
    /// Copies the best epoch's adapter (what <see cref="LoraTrainer{TRow}.Train"/> returned; null when the last epoch's
    /// weights are the ones to keep) into <paramref name="model"/>, then disposes it.
    /// </summary>
    internal static void RestoreBest<TRow>(ILoraModel<TRow> model, SortedDictionary<string, Tensor>? best)
        where TRow : ILabeledRow
    {
        if (best is null)
        {
            return;
        }

        try
        {
            model.LoadAdapterState(best);
        }
        finally
        {
            DisposeState(best);
        }
    }

    internal static void DisposeState(SortedDictionary<string, Tensor>? state)
    {
        if (state is null)
        {
            return;
        }

        foreach (var tensor in state.Values)
        {
            tensor.Dispose();
        }
    }
}
