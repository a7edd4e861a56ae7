using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>Argument checks and small conventions shared by the layer factories and injection.</summary>
internal static class LoraArguments
{
    internal static void Check(int r, double lora_alpha, double lora_dropout)
    {
        if (r < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(r), r, "r (the LoRA rank) must be 0 (plain layer) or positive.");
        }

        if (!(lora_alpha > 0) || double.IsInfinity(lora_alpha))
        {
            throw new ArgumentOutOfRangeException(nameof(lora_alpha), lora_alpha, "lora_alpha must be a finite number greater than 0.");
        }

        if (!(lora_dropout >= 0 && lora_dropout < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(lora_dropout), lora_dropout, "lora_dropout must be in [0, 1).");
        }
    }

    internal static LoraInitKind ParseInit(string init_lora_weights)
    {
        ArgumentNullException.ThrowIfNull(init_lora_weights);
        return init_lora_weights.Trim().ToUpperInvariant() switch
        {
            "TRUE" => LoraInitKind.Default,
            "GAUSSIAN" => LoraInitKind.Gaussian,
            "FALSE" => LoraInitKind.Random,
            _ => throw new ArgumentException(
                $"init_lora_weights must be \"true\", \"false\" or \"gaussian\", got \"{init_lora_weights}\".", nameof(init_lora_weights)),
        };
    }

    /// <summary>LoRA factors stay float32 for a half-precision base (as PEFT's autocast_adapter_dtype).</summary>
    internal static ScalarType FactorDtype(ScalarType baseDtype) =>
        baseDtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : baseDtype;

    /// <summary>A factor that starts as loralib's A: kaiming-uniform(a=√5), or normal(0, 1/r) for "gaussian".</summary>
    internal static void InitDown(Tensor a, int r, LoraInitKind init)
    {
        using var noGrad = no_grad();
        if (init == LoraInitKind.Gaussian)
        {
            nn.init.normal_(a, 0, 1.0 / r);
        }
        else
        {
            nn.init.kaiming_uniform_(a, a: Math.Sqrt(5));
        }
    }

    /// <summary>B factor: zeros, or kaiming-uniform for "false" so the update starts non-zero.</summary>
    internal static void InitUp(Tensor b, LoraInitKind init)
    {
        using var noGrad = no_grad();
        if (init == LoraInitKind.Random)
        {
            nn.init.kaiming_uniform_(b, a: Math.Sqrt(5));
        }
        else
        {
            b.zero_();
        }
    }

    internal static Parameter NewParameter(Tensor t, bool requires_grad = true) =>
        (Parameter)new Parameter(t, requires_grad).DetachFromDisposeScope();
}
