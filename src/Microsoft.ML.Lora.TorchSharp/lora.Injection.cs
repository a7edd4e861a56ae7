using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

public static partial class lora
{
    /// <summary>
    /// Replaces the modules of <paramref name="model"/> selected by <paramref name="config"/> with LoRA layers, in place
    /// (PEFT's <c>inject_adapter_in_model</c>), then freezes everything but the LoRA factors, the biases chosen by
    /// <see cref="LoraConfig.bias"/> and the parameters of <see cref="LoraConfig.modules_to_save"/>.
    /// </summary>
    /// <remarks>
    /// <para>Supported modules: TorchSharp's <c>Linear</c>, <c>Embedding</c>, <c>Conv1d</c>, <c>Conv2d</c>, <c>Conv3d</c>.
    /// Each LoRA layer takes over the base module's own <c>weight</c>/<c>bias</c> tensors (no copy), so the model's
    /// <c>state_dict()</c> keeps its base keys and a base checkpoint still loads; it adds <c>&lt;path&gt;.lora_A</c> and
    /// <c>&lt;path&gt;.lora_B</c>.</para>
    /// <para>The module is swapped both in its parent's registry and in the parent's field that holds it (and that
    /// <c>forward</c> reads): such fields must be declared as <c>Module&lt;Tensor, Tensor&gt;</c> (TorchSharp's
    /// <c>Linear</c> is sealed). Children of <c>Sequential</c> and <c>ModuleList</c> are swapped in their lists.</para>
    /// <para><see cref="LoraConfig.fan_in_fan_out"/> does not apply to TorchSharp <c>Linear</c> modules (their weight is
    /// always out × in); as PEFT does for <c>nn.Linear</c>, it is treated as false for them.</para>
    /// <para>Nothing is changed when an error is thrown.</para>
    /// </remarks>
    /// <param name="config">What to adapt and how.</param>
    /// <param name="model">The model to change in place.</param>
    /// <returns>The paths of the modules that were replaced, in <c>named_modules()</c> order.</returns>
    /// <exception cref="ArgumentException">A setting of <paramref name="config"/> is invalid, no module matches the targets
    /// (the message lists the model's module names), a targeted module has an unsupported type, or the parent holds it
    /// in a field whose type cannot take a LoRA layer.</exception>
    public static IReadOnlyList<string> inject_adapter_in_model(LoraConfig config, nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(model);
        return LoraInjector.Inject(config, model);
    }
}
