using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

public static partial class lora
{
    /// <summary>
    /// Freezes every parameter of <paramref name="model"/> except the LoRA factors and, per <paramref name="bias"/>, biases.
    /// A parameter is a LoRA factor when a dot-separated segment of its name is exactly <c>lora_A</c> or <c>lora_B</c>
    /// (so a module called e.g. <c>my_lora_head</c> is not swept in). Factors of named adapters that are not active in their
    /// layer (see <see cref="set_adapter"/>) are frozen too, as in PEFT.
    /// </summary>
    /// <param name="model">The model to change in place.</param>
    /// <param name="bias">"none" (default), "all" (every <c>bias</c>) or "lora_only" (biases of LoRA layers).</param>
    /// <exception cref="ArgumentException"><paramref name="bias"/> is not one of the three names.</exception>
    public static void mark_only_lora_as_trainable(nn.Module model, string bias = "none") =>
        mark_only_lora_as_trainable(model, ParseBias(bias));

    /// <summary>Freezes everything but the LoRA factors of active adapters and, per <paramref name="bias"/>, biases.</summary>
    /// <param name="model">The model to change in place.</param>
    /// <param name="bias">Which biases stay trainable.</param>
    public static void mark_only_lora_as_trainable(nn.Module model, LoraBias bias)
    {
        ArgumentNullException.ThrowIfNull(model);
        var loraBiases = LoraBiasNames(model);

        // Factors of named adapters that are not active stay frozen, as PEFT: only the active adapters train.
        var inactive = new HashSet<IntPtr>();
        foreach (var (_, layer) in LoraLayers(model))
        {
            foreach (var adapter in layer.adapter_names.Where(a => !layer.active_adapters.Contains(a)))
            {
                inactive.Add(layer.get_lora_A(adapter).Handle);
                inactive.Add(layer.get_lora_B(adapter).Handle);
            }
        }

        foreach (var (name, parameter) in model.named_parameters())
        {
            parameter.requires_grad = (IsLoraParameterName(name) && !inactive.Contains(parameter.Handle)) || IsSelectedBias(name, bias, loraBiases);
        }
    }

    /// <summary>
    /// The LoRA part of <paramref name="model"/>'s <c>state_dict()</c>: entries whose name has a segment <c>lora_A</c> or
    /// <c>lora_B</c>, plus biases per <paramref name="bias"/>. Values are the model's own tensors (not copies).
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="bias">"none" (default), "all" or "lora_only".</param>
    /// <returns>Name → tensor, in <c>state_dict()</c> order.</returns>
    /// <exception cref="ArgumentException"><paramref name="bias"/> is not one of the three names.</exception>
    public static Dictionary<string, Tensor> lora_state_dict(nn.Module model, string bias = "none") =>
        lora_state_dict(model, ParseBias(bias));

    /// <summary>The LoRA part of <paramref name="model"/>'s <c>state_dict()</c>, plus biases per <paramref name="bias"/>.</summary>
    /// <param name="model">The model.</param>
    /// <param name="bias">Which biases to include.</param>
    /// <returns>Name → tensor, in <c>state_dict()</c> order.</returns>
    public static Dictionary<string, Tensor> lora_state_dict(nn.Module model, LoraBias bias)
    {
        ArgumentNullException.ThrowIfNull(model);
        var loraBiases = LoraBiasNames(model);
        var result = new Dictionary<string, Tensor>();
        foreach (var (name, tensor) in model.state_dict())
        {
            if (IsLoraParameterName(name) || IsSelectedBias(name, bias, loraBiases))
            {
                result[name] = tensor;
            }
        }

        return result;
    }

    /// <summary>
    /// Counts trainable and total parameters of <paramref name="model"/> (each tensor once) and writes
    /// <c>trainable params: T || all params: N || trainable%: P</c> to the console, as PEFT does.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <returns>The number of trainable elements and of all elements.</returns>
    public static (long trainable, long total) print_trainable_parameters(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var seen = new HashSet<IntPtr>();
        long trainable = 0, total = 0;
        foreach (var (_, parameter) in model.named_parameters())
        {
            if (!seen.Add(parameter.Handle))
            {
                continue;
            }

            total += parameter.numel();
            if (parameter.requires_grad)
            {
                trainable += parameter.numel();
            }
        }

        var percent = total == 0 ? 0.0 : 100.0 * trainable / total;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"trainable params: {trainable:N0} || all params: {total:N0} || trainable%: {percent:0.####}"));
        return (trainable, total);
    }

    /// <summary>
    /// The one answer to "is this a LoRA tensor?" for a parameter or state-dict name, used by every package: true when a
    /// dot-separated segment of <paramref name="name"/> is exactly <c>lora_A</c> or <c>lora_B</c> (the default adapter's
    /// factors, <c>….query.lora_A</c>, and a named adapter's, <c>….query.lora_adapters.other.lora_A</c>). The base weights,
    /// heads and <c>modules_to_save</c> are not LoRA tensors.
    /// </summary>
    internal static bool IsLoraParameterName(string name)
    {
        foreach (var segment in name.Split('.'))
        {
            if (segment is "lora_A" or "lora_B")
            {
                return true;
            }
        }

        return false;
    }

    internal static LoraBias ParseBias(string bias) => bias switch
    {
        "none" => LoraBias.None,
        "all" => LoraBias.All,
        "lora_only" => LoraBias.LoraOnly,
        _ => throw new ArgumentException($"bias must be \"none\", \"all\" or \"lora_only\", got \"{bias}\".", nameof(bias)),
    };

    private static bool IsSelectedBias(string name, LoraBias bias, HashSet<string> loraBiases) => bias switch
    {
        LoraBias.All => name == "bias" || name.EndsWith(".bias", StringComparison.Ordinal),
        LoraBias.LoraOnly => loraBiases.Contains(name),
        _ => false,
    };

    /// <summary>Full names of the <c>bias</c> parameters of LoRA layers with r &gt; 0.</summary>
    private static HashSet<string> LoraBiasNames(nn.Module model)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (path, module) in model.named_modules())
        {
            if (module is ILoraLayer { r: > 0 } && module is Modules.LoraLayer { bias: not null })
            {
                names.Add(path.Length == 0 ? "bias" : path + ".bias");
            }
        }

        if (model is ILoraLayer { r: > 0 } && model is Modules.LoraLayer { bias: not null })
        {
            names.Add("bias");
        }

        return names;
    }
}
