using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// A linear layer whose output is split into <c>enable_lora.Length</c> equal groups (e.g. a fused q/k/v projection),
/// with a separate rank-r update on each enabled group (loralib's <c>MergedLinear</c>). A stacks the enabled groups'
/// down-projections (r·k × in_features) and B their up-projections (out_features/groups·k × r), k = enabled groups.
/// </summary>
/// <remarks>Training forward never builds ΔW (loralib #109): each group's update is x·A_gᵀ·B_gᵀ.</remarks>
public sealed class MergedLinear : LoraLayer
{
    // Output positions of the enabled groups. Kept as numbers plus a per-device tensor in an array (not a Tensor field),
    // so it is neither a parameter nor a buffer: TorchSharp's .to() would re-register a buffer as persistent.
    private readonly long[] _positions = [];
    private Tensor[]? _positionsOnDevice;

    internal MergedLinear(Parameter weight, Parameter? bias, int r, double lora_alpha, double lora_dropout,
        bool[] enable_lora, bool fan_in_fan_out, bool merge_weights, bool use_rslora, LoraInitKind init)
        : base(nameof(MergedLinear), weight, bias, r, lora_alpha, lora_dropout, merge_weights, use_rslora)
    {
        ArgumentNullException.ThrowIfNull(enable_lora);
        if (weight.dim() != 2)
        {
            throw new ArgumentException($"A linear weight must be 2-D, got shape [{string.Join(", ", weight.shape)}].", nameof(weight));
        }

        this.fan_in_fan_out = fan_in_fan_out;
        in_features = fan_in_fan_out ? weight.shape[0] : weight.shape[1];
        out_features = fan_in_fan_out ? weight.shape[1] : weight.shape[0];
        CheckGroups(out_features, r, enable_lora);
        this.enable_lora = (bool[])enable_lora.Clone();
        enabled_groups = enable_lora.Count(e => e);
        group_size = out_features / enable_lora.Length;

        if (r > 0)
        {
            var dtype = LoraArguments.FactorDtype(weight.dtype);
            var a = torch.empty(r * enabled_groups, in_features, dtype: dtype, device: weight.device);
            var b = torch.empty(group_size * enabled_groups, r, dtype: dtype, device: weight.device);
            LoraArguments.InitDown(a, r, init);
            LoraArguments.InitUp(b, init);
            lora_A = LoraArguments.NewParameter(a);
            lora_B = LoraArguments.NewParameter(b);
            _positions = Enumerable.Range(0, enable_lora.Length)
                .Where(g => enable_lora[g])
                .SelectMany(g => Enumerable.Range(0, (int)group_size).Select(i => g * group_size + i))
                .ToArray();
        }
    }

    /// <summary>Size of each input sample.</summary>
    public long in_features { get; }

    /// <summary>Size of each output sample (all groups).</summary>
    public long out_features { get; }

    /// <summary>True when <c>weight</c> is stored as (in_features × out_features), as GPT-2's Conv1D.</summary>
    public bool fan_in_fan_out { get; }

    /// <summary>One flag per output group: whether that group gets a LoRA update (a copy; changing it has no effect).</summary>
    public IReadOnlyList<bool> enable_lora { get; }

    /// <summary>Number of groups with LoRA.</summary>
    public int enabled_groups { get; }

    /// <summary>Outputs per group: out_features / enable_lora.Length.</summary>
    public long group_size { get; }

    /// <summary>Applies the layer to <paramref name="input"/> (…, in_features) and returns (…, out_features).</summary>
    /// <param name="input">The input tensor.</param>
    /// <returns>The output tensor.</returns>
    public override Tensor forward(Tensor input)
    {
        if (merged)
        {
            RefreshMergedDelta();
        }

        var w = fan_in_fan_out ? weight.t() : weight;
        var result = nn.functional.linear(input, w, bias);
        if (r == 0 || merged)
        {
            return result;
        }

        var x = LoraInput(input); // may be input itself: not disposed here
        using var down = nn.functional.linear(x, lora_A!);                       // (…, k·r)
        using var downGroups = down.reshape(-1, enabled_groups, r);               // (n, k, r)
        using var bGroups = lora_B!.view(enabled_groups, group_size, r);          // (k, g, r)
        using var up = torch.einsum("nkr,kgr->nkg", downGroups, bGroups);         // (n, k, g)
        long[] shape = [.. result.shape[..^1], enabled_groups * group_size];
        using var update = (up.dtype == result.dtype ? up.alias() : up.to(result.dtype)).reshape(shape);
        return enabled_groups * group_size == out_features
            ? result.add_(update, alpha: scaling)
            : result.index_add_(-1, Positions(result.device), update, alpha: scaling);
    }

    /// <summary>ΔW rows of enabled group g are B_g·A_g; rows of disabled groups are zero.</summary>
    private protected override Tensor DeltaWeight(Tensor a, Tensor b)
    {
        using var bGroups = b.view(enabled_groups, group_size, r);
        using var aGroups = a.view(enabled_groups, r, in_features);
        using var product = bGroups.bmm(aGroups).reshape(enabled_groups * group_size, in_features);
        var delta = torch.zeros(out_features, in_features, dtype: ScalarType.Float32, device: a.device)
            .index_add_(0, Positions(a.device), product, alpha: scaling);
        return fan_in_fan_out ? delta.t() : delta;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing && _positionsOnDevice is not null)
        {
            _positionsOnDevice[0].Dispose();
            _positionsOnDevice = null;
        }

        base.Dispose(disposing);
    }

    private Tensor Positions(Device device)
    {
        if (_positionsOnDevice is null || !_positionsOnDevice[0].device.SameAs(device))
        {
            _positionsOnDevice?[0].Dispose();
            _positionsOnDevice = [torch.tensor(_positions, dtype: ScalarType.Int64, device: device).DetachFromDisposeScope()];
        }

        return _positionsOnDevice[0];
    }

    internal static void CheckGroups(long out_features, int r, bool[] enable_lora)
    {
        if (enable_lora.Length == 0)
        {
            throw new ArgumentException("enable_lora needs at least one group flag.", nameof(enable_lora));
        }

        if (out_features % enable_lora.Length != 0)
        {
            throw new ArgumentException(
                $"enable_lora has {enable_lora.Length} groups, which must divide out_features ({out_features}).", nameof(enable_lora));
        }

        if (r > 0 && !enable_lora.Any(e => e))
        {
            throw new ArgumentException(
                $"r is {r} but enable_lora enables no group; enable at least one group or use r = 0 for a plain layer.", nameof(enable_lora));
        }
    }
}
