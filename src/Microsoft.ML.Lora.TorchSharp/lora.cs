using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// LoRA for TorchSharp in the idiom of <c>torch.nn</c> and Microsoft's <c>loralib</c>: layer factories
/// (<c>lora.Linear</c>, <c>lora.Embedding</c>, <c>lora.Conv1d/2d/3d</c>, <c>lora.MergedLinear</c>), training helpers
/// (<see cref="mark_only_lora_as_trainable(nn.Module, string)"/>, <see cref="lora_state_dict(nn.Module, string)"/>) and
/// injection into an existing model (<see cref="inject_adapter_in_model"/>), and PEFT's multi-adapter operations
/// (<see cref="add_adapter"/>, <see cref="set_adapter"/>, <see cref="delete_adapter"/>, <see cref="disable_adapter"/>,
/// <see cref="adapter_names_scope"/>, <see cref="add_weighted_adapter"/>, <see cref="merge_and_unload"/>, <see cref="unload"/>).
/// PEFT adapter directories are read and written by <see cref="PeftAdapter"/>.
/// </summary>
/// <remarks>Names are lower case / snake_case on purpose, as TorchSharp's <c>torch.nn</c> and Python's loralib.</remarks>
public static partial class lora
{
    /// <summary>
    /// Creates a LoRA linear layer (loralib's <c>lora.Linear</c>). With <paramref name="r"/> 0 it is a plain linear layer.
    /// </summary>
    /// <param name="in_features">Size of each input sample.</param>
    /// <param name="out_features">Size of each output sample.</param>
    /// <param name="r">Rank of the update; 0 (default) means no LoRA.</param>
    /// <param name="lora_alpha">α; the update is scaled by α/r (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="fan_in_fan_out">Store the weight as (in × out), as GPT-2's Conv1D (default false).</param>
    /// <param name="merge_weights">Merge ΔW into the weight on <c>eval()</c> and unmerge on <c>train()</c> (default true).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r instead of α/r (default false).</param>
    /// <param name="init_lora_weights">"true" (A kaiming-uniform, B zeros), "gaussian" (A normal std 1/r, B zeros) or "false" (both random).</param>
    /// <param name="device">Device of the parameters (default: the default device).</param>
    /// <param name="dtype">Type of the base parameters (default: the default type); factors stay float32 for half types.</param>
    /// <returns>The layer, in training mode.</returns>
    /// <exception cref="ArgumentOutOfRangeException">r &lt; 0, lora_alpha ≤ 0, lora_dropout outside [0, 1), or a size ≤ 0.</exception>
    public static Modules.Linear Linear(long in_features, long out_features, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool fan_in_fan_out = false, bool merge_weights = true, bool bias = true,
        bool use_rslora = false, string init_lora_weights = "true", Device? device = null, ScalarType? dtype = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(in_features);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(out_features);
        LoraArguments.Check(r, lora_alpha, lora_dropout);
        var init = LoraArguments.ParseInit(init_lora_weights);
        var (w, b) = BaseInit.Linear(in_features, out_features, bias, fan_in_fan_out, device, dtype);

        return new Modules.Linear(LoraArguments.NewParameter(w), b is null ? null : LoraArguments.NewParameter(b),
            r, lora_alpha, lora_dropout, fan_in_fan_out, merge_weights, use_rslora, init);
    }
}
