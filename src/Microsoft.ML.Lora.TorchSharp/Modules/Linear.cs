using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// A linear layer with a low-rank update: <c>y = x·Wᵀ + b + dropout(x)·Aᵀ·Bᵀ·scaling</c>, where W and b are frozen and
/// A (r × in_features), B (out_features × r) train. Create it with <see cref="lora.Linear"/> or by injection.
/// </summary>
public sealed class Linear : LoraLayer
{
    internal Linear(Parameter weight, Parameter? bias, int r, double lora_alpha, double lora_dropout,
        bool fan_in_fan_out, bool merge_weights, bool use_rslora, LoraInitKind init,
        string adapter_name = DefaultAdapter, LoraConfig? config = null)
        : base(nameof(Linear), weight, bias, r, lora_alpha, lora_dropout, merge_weights, use_rslora)
    {
        if (weight.dim() != 2)
        {
            throw new ArgumentException($"A linear weight must be 2-D, got shape [{string.Join(", ", weight.shape)}].", nameof(weight));
        }

        this.fan_in_fan_out = fan_in_fan_out;
        in_features = fan_in_fan_out ? weight.shape[0] : weight.shape[1];
        out_features = fan_in_fan_out ? weight.shape[1] : weight.shape[0];
        if (bias is not null && (bias.dim() != 1 || bias.shape[0] != out_features))
        {
            throw new ArgumentException($"The bias must have shape [{out_features}], got [{string.Join(", ", bias.shape)}].", nameof(bias));
        }

        if (r > 0)
        {
            AddAdapter(adapter_name, r, lora_alpha, lora_dropout, use_rslora, init, config);
            SetActive([adapter_name]);
        }
    }

    /// <summary>Size of each input sample.</summary>
    public long in_features { get; }

    /// <summary>Size of each output sample.</summary>
    public long out_features { get; }

    /// <summary>True when <c>weight</c> is stored as (in_features × out_features), as GPT-2's Conv1D.</summary>
    public bool fan_in_fan_out { get; }

    private protected override Tensor BaseForward(Tensor input) =>
        nn.functional.linear(input, fan_in_fan_out ? weight.t() : weight, bias);

    private protected override Tensor AdapterForward(Tensor x, Tensor a, Tensor b, int r)
    {
        using var down = nn.functional.linear(x, a);
        return nn.functional.linear(down, b);
    }

    private protected override Tensor? RecomputingDropoutForward(Tensor input, Tensor a, Tensor b, double dropout)
    {
        if (input.device.type != DeviceType.CPU)
        {
            return null;
        }

        using var down = LoraDropoutDownFunction.Apply(input, a, dropout);
        return nn.functional.linear(down, b);
    }

    private protected override (Tensor a, Tensor b) CreateFactors(int r, LoraInitKind init)
    {
        var dtype = LoraArguments.FactorDtype(weight.dtype);
        var a = torch.empty(r, in_features, dtype: dtype, device: weight.device);
        var b = torch.empty(out_features, r, dtype: dtype, device: weight.device);
        LoraArguments.InitDown(a, r, init);
        LoraArguments.InitUp(b, init);
        return (a, b);
    }

    private protected override Tensor DeltaWeight(Tensor a, Tensor b, int r, double scaling)
    {
        var delta = b.matmul(a).mul_(scaling);
        return fan_in_fan_out ? delta.t() : delta;
    }
}
