using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// The two factors of a named adapter other than "default", registered under a LoRA layer as
/// <c>lora_adapters.&lt;name&gt;.lora_A</c> / <c>.lora_B</c> (so <c>state_dict</c> and <c>mark_only_lora_as_trainable</c> see them).
/// </summary>
internal sealed class LoraFactors : nn.Module
{
    [ComponentName(Name = "lora_A")]
    private Parameter _lora_A;

    [ComponentName(Name = "lora_B")]
    private Parameter _lora_B;

    internal LoraFactors(Parameter a, Parameter b) : base(nameof(LoraFactors))
    {
        _lora_A = a;
        _lora_B = b;
        register_parameter("lora_A", a);
        register_parameter("lora_B", b);
    }

    internal Parameter lora_A => _lora_A;

    internal Parameter lora_B => _lora_B;
}

/// <summary>The container registered as <c>lora_adapters</c> under a LoRA layer; one child per named adapter.</summary>
internal sealed class LoraAdapterModules : nn.Module
{
    internal LoraAdapterModules() : base(nameof(LoraAdapterModules))
    {
    }

    internal void Add(string name, LoraFactors factors) => register_module(name, factors);
}
