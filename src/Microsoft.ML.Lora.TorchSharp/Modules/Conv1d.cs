using TorchSharp.Modules;

namespace Microsoft.ML.Lora.Modules;

/// <summary>A 1-D convolution with a low-rank update; see <see cref="LoraConvNd"/> for the factorisation.</summary>
public sealed class Conv1d : LoraConvNd
{
    internal Conv1d(Parameter weight, Parameter? bias, long[] stride, long[] padding, long[] dilation, long groups,
        int r, double lora_alpha, double lora_dropout, bool merge_weights, bool use_rslora, LoraInitKind init,
        string adapter_name = DefaultAdapter, LoraConfig? config = null, LoraConvFactorization factorization = LoraConvFactorization.Peft)
        : base(nameof(Conv1d), 1, weight, bias, stride, padding, dilation, groups, r, lora_alpha, lora_dropout,
            merge_weights, use_rslora, init, adapter_name, config, factorization)
    {
    }
}
