using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The tensors a model file stores for any model family (<see cref="ILoraModel{TRow}.AdapterState"/>): the parameters a
/// family's predicate names (its LoRA factors and its head), by parameter path, and the checked copy back into a rebuilt model.
/// </summary>
internal static class AdapterTensors
{
    /// <summary>Every parameter of <paramref name="model"/> that <paramref name="isAdapterTensor"/> names, copied to the CPU, by path in ordinal order.</summary>
    public static SortedDictionary<string, Tensor> Copy(nn.Module model, Func<string, bool> isAdapterTensor)
    {
        var result = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (isAdapterTensor(name))
            {
                result[name] = parameter.detach().to(CPU).clone();
            }
        }

        return result;
    }

    /// <summary>Copies stored tensors into the parameters <paramref name="isAdapterTensor"/> names (all must be present, with matching shapes).</summary>
    /// <param name="model">The rebuilt model.</param>
    /// <param name="isAdapterTensor">The family's predicate.</param>
    /// <param name="state">The stored tensors.</param>
    /// <param name="what">The model, as the error names it (e.g. "the rebuilt model").</param>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected or of another shape.</exception>
    public static void Load(nn.Module model, Func<string, bool> isAdapterTensor, IReadOnlyDictionary<string, Tensor> state, string what)
    {
        var parameters = model.named_parameters().Where(p => isAdapterTensor(p.name)).ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        var missing = parameters.Keys.Where(k => !state.ContainsKey(k)).ToList();
        var extra = state.Keys.Where(k => !parameters.ContainsKey(k)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
        {
            throw new InvalidDataException(
                $"The stored adapter does not fit {what}. Missing: [{string.Join(", ", missing)}]; unexpected: [{string.Join(", ", extra)}].");
        }

        using var noGrad = no_grad();
        foreach (var (name, parameter) in parameters)
        {
            var value = state[name];
            if (!value.shape.SequenceEqual(parameter.shape))
            {
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"Stored tensor '{name}' has shape [{string.Join(", ", value.shape)}]; the model expects [{string.Join(", ", parameter.shape)}]."));
            }

            parameter.copy_(value);
        }
    }

    /// <summary>
    /// Readies a model just injected on a shared base: with <paramref name="privateWeights"/> every adapted layer first gets
    /// a private copy of its base weight (<see cref="PrivatizeAdaptedWeights"/>, before merging writes into it); then only
    /// the LoRA factors and the head (parameters under <paramref name="headPrefix"/>) train.
    /// </summary>
    public static void FreezeAllButAdapter(nn.Module model, string headPrefix, bool privateWeights)
    {
        if (privateWeights)
        {
            PrivatizeAdaptedWeights(model);
        }

        lora.mark_only_lora_as_trainable(model);
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (name.StartsWith(headPrefix, StringComparison.Ordinal))
            {
                parameter.requires_grad = true;
            }
        }
    }

    /// <summary>
    /// Gives every LoRA layer of <paramref name="model"/> a private copy of its base weight, so that merging the update into
    /// it (eval mode) leaves the shared base unchanged; the other layers keep aliasing the base.
    /// </summary>
    private static void PrivatizeAdaptedWeights(nn.Module model)
    {
        using var noGrad = no_grad();
        foreach (var (_, module) in model.named_modules())
        {
            if (module is Modules.LoraLayer layer)
            {
                var shared = layer.weight;
                layer.weight = new TorchSharp.Modules.Parameter(shared.detach().clone(), requires_grad: false);
                shared.Dispose();
            }
        }
    }
}
