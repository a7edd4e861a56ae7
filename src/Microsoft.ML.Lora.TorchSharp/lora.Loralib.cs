using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

public static partial class lora
{
    /// <summary>
    /// Loads a state dict saved by Python's loralib into <paramref name="model"/>. loralib's convolution layers register
    /// their inner convolution's tensors under two names (<c>&lt;path&gt;.weight</c> and <c>&lt;path&gt;.conv.weight</c>, the
    /// same for <c>bias</c>); for every LoRA convolution of the model with <see cref="LoraConvFactorization.Loralib"/>, the
    /// <c>conv.*</c> duplicates are read as <c>weight</c>/<c>bias</c> (their values must agree when both are present). All
    /// other keys load as in <c>load_state_dict</c>.
    /// </summary>
    /// <param name="model">The model (its loralib convolutions built with <c>lora.Conv2d</c> etc. or the default factorisation).</param>
    /// <param name="state">Name → tensor, as loralib's <c>model.state_dict()</c> or <c>lora_state_dict()</c> wrote it.</param>
    /// <param name="strict">Whether every key must match after the renaming (default true; use false for a LoRA-only dict).</param>
    /// <returns>The missing and unexpected keys.</returns>
    /// <exception cref="ArgumentException">A <c>conv.*</c> duplicate differs from its plain key.</exception>
    public static (IList<string> missing_keys, IList<string> unexpected_keys) load_loralib_state_dict(nn.Module model,
        IReadOnlyDictionary<string, Tensor> state, bool strict = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(state);
        var source = new Dictionary<string, Tensor>(state, StringComparer.Ordinal);
        foreach (var (path, layer) in LoraLayers(model))
        {
            if (layer is not Modules.LoraConvNd { factorization: LoraConvFactorization.Loralib })
            {
                continue;
            }

            var prefix = path.Length == 0 ? "" : path + ".";
            foreach (var name in new[] { "weight", "bias" })
            {
                if (!source.Remove(prefix + "conv." + name, out var duplicate))
                {
                    continue;
                }

                if (source.TryGetValue(prefix + name, out var own)
                    && !(own.shape.SequenceEqual(duplicate.shape) && own.Equals(duplicate.to(own.dtype, own.device))))
                {
                    throw new ArgumentException(
                        $"'{prefix}conv.{name}' and '{prefix}{name}' are the same tensor in loralib but differ in this state dict.", nameof(state));
                }

                source[prefix + name] = duplicate;
            }
        }

        return model.load_state_dict(source, strict);
    }

    /// <summary>
    /// <paramref name="model"/>'s <c>state_dict()</c> laid out as Python's loralib writes it: for every LoRA convolution with
    /// <see cref="LoraConvFactorization.Loralib"/>, its <c>weight</c>/<c>bias</c> appear a second time as
    /// <c>&lt;path&gt;.conv.weight</c>/<c>&lt;path&gt;.conv.bias</c> (the same tensors), so loralib's model loads the result with
    /// <c>strict=True</c>. Values are the model's own tensors (not copies).
    /// </summary>
    /// <param name="model">The model.</param>
    /// <returns>Name → tensor, <c>state_dict()</c> order with the duplicates after each convolution's own keys.</returns>
    public static Dictionary<string, Tensor> loralib_state_dict(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var state = model.state_dict();
        var convs = LoraLayers(model).Where(l => l.layer is Modules.LoraConvNd { factorization: LoraConvFactorization.Loralib })
            .Select(l => l.path.Length == 0 ? "" : l.path + ".").ToList();
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (key, tensor) in state)
        {
            result[key] = tensor;
            foreach (var prefix in convs)
            {
                if (key == prefix + "weight" || key == prefix + "bias")
                {
                    result[prefix + "conv." + key[prefix.Length..]] = tensor;
                }
            }
        }

        return result;
    }
}
