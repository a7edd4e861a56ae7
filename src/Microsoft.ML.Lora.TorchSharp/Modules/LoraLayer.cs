using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// State shared by every LoRA layer (loralib's <c>LoRALayer</c> mixin): the frozen base parameters
/// <c>weight</c>/<c>bias</c>, the trainable factors <c>lora_A</c>/<c>lora_B</c>, the scaling, and merging.
/// </summary>
/// <remarks>
/// <para><c>eval()</c> (or <c>train(false)</c>) adds ΔW = scaling·B·A into <c>weight</c> when <see cref="merge_weights"/>
/// is set; <c>train()</c> subtracts it again. ΔW is always computed in float32, also for a half-precision base.</para>
/// <para>The factors that were merged are remembered, so new values written into <c>lora_A</c>/<c>lora_B</c> while the
/// layer is merged (for example by <c>load_state_dict</c>) are noticed by the next forward, which re-merges them:
/// loading adapter weights into a merged layer gives the same model as loading them unmerged (loralib #190).</para>
/// </remarks>
public abstract class LoraLayer : nn.Module<Tensor, Tensor>, ILoraLayer
{
    [ComponentName(Name = "weight")]
    private Parameter _weight;

    [ComponentName(Name = "bias")]
    private Parameter? _bias;

    [ComponentName(Name = "lora_A")]
    private Parameter? _lora_A;

    [ComponentName(Name = "lora_B")]
    private Parameter? _lora_B;

    // Copies of the factors whose product is currently inside weight. An array, so that TorchSharp's
    // RegisterComponents does not register it as a buffer (it must not appear in state_dict).
    private Tensor[]? _mergedFactors;

    private protected LoraLayer(string name, Parameter weight, Parameter? bias, int r, double lora_alpha,
        double lora_dropout, bool merge_weights, bool use_rslora)
        : base(name)
    {
        ArgumentNullException.ThrowIfNull(weight);
        LoraArguments.Check(r, lora_alpha, lora_dropout);

        this.r = r;
        this.lora_alpha = lora_alpha;
        this.lora_dropout = lora_dropout;
        this.merge_weights = merge_weights;
        this.use_rslora = use_rslora;
        scaling = r == 0 ? 0.0 : use_rslora ? lora_alpha / Math.Sqrt(r) : lora_alpha / r;

        _weight = weight;
        register_parameter("weight", weight);
        _bias = bias;
        if (bias is not null)
        {
            register_parameter("bias", bias);
        }

        if (r > 0)
        {
            // The pretrained weight is frozen; the bias keeps its setting (mark_only_lora_as_trainable decides).
            weight.requires_grad = false;
        }
    }

    /// <inheritdoc/>
    public int r { get; }

    /// <summary>The α of the update; <see cref="scaling"/> is α/r (α/√r with <see cref="use_rslora"/>).</summary>
    public double lora_alpha { get; }

    /// <summary>Dropout probability applied to the input of the LoRA branch only, and only in training mode.</summary>
    public double lora_dropout { get; }

    /// <summary>When true, <c>eval()</c> merges ΔW into <c>weight</c> and <c>train()</c> unmerges it.</summary>
    public bool merge_weights { get; }

    /// <summary>Rank-stabilised LoRA: scaling is α/√r instead of α/r.</summary>
    public bool use_rslora { get; }

    /// <inheritdoc/>
    public double scaling { get; }

    /// <inheritdoc/>
    public bool merged { get; private set; }

    /// <summary>The frozen base weight (same tensor as in the base layer the LoRA layer replaced).</summary>
    /// <exception cref="ArgumentException">The new value's shape differs from the current one.</exception>
    public Parameter weight
    {
        get => _weight;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            CheckSameShape(_weight, value, "weight");
            _weight = (Parameter)value.DetachFromDisposeScope();
            ConditionallyRegisterParameter("weight", _weight);
        }
    }

    /// <summary>The base bias, or null when the layer has none.</summary>
    public Parameter? bias
    {
        get => _bias;
        set
        {
            CheckSameShape(_bias, value, "bias");
            _bias = value?.DetachFromDisposeScope() as Parameter;
            ConditionallyRegisterParameter("bias", _bias);
        }
    }

    /// <summary>The down-projection factor A (rank <see cref="r"/> rows/out-channels); null when <c>r</c> is 0.</summary>
    /// <exception cref="ArgumentException">The new value's shape differs from the current one.</exception>
    public Parameter? lora_A
    {
        get => _lora_A;
        set
        {
            if (_lora_A is not null)
            {
                ArgumentNullException.ThrowIfNull(value);
                CheckSameShape(_lora_A, value, "lora_A");
            }

            _lora_A = value?.DetachFromDisposeScope() as Parameter;
            ConditionallyRegisterParameter("lora_A", _lora_A);
        }
    }

    /// <summary>The up-projection factor B (initialised to zero except for Embedding); null when <c>r</c> is 0.</summary>
    /// <exception cref="ArgumentException">The new value's shape differs from the current one.</exception>
    public Parameter? lora_B
    {
        get => _lora_B;
        set
        {
            if (_lora_B is not null)
            {
                ArgumentNullException.ThrowIfNull(value);
                CheckSameShape(_lora_B, value, "lora_B");
            }

            _lora_B = value?.DetachFromDisposeScope() as Parameter;
            ConditionallyRegisterParameter("lora_B", _lora_B);
        }
    }

    /// <summary>
    /// Sets training mode on this layer and its children; when <see cref="merge_weights"/> is set,
    /// <c>train(false)</c> merges ΔW into <c>weight</c> and <c>train(true)</c> removes it.
    /// </summary>
    /// <param name="train">True for training mode, false for evaluation mode.</param>
    public override void train(bool train = true)
    {
        base.train(train);
        if (!merge_weights || r == 0)
        {
            return;
        }

        if (train)
        {
            unmerge();
        }
        else
        {
            merge();
        }
    }

    /// <inheritdoc/>
    public void merge()
    {
        if (r == 0 || merged)
        {
            return;
        }

        using var noGrad = torch.no_grad();
        _mergedFactors = SnapshotFactors();
        AddDelta(_mergedFactors[0], _mergedFactors[1], 1.0);
        merged = true;
    }

    /// <inheritdoc/>
    public void unmerge()
    {
        if (!merged)
        {
            return;
        }

        using var noGrad = torch.no_grad();
        AddDelta(_mergedFactors![0], _mergedFactors[1], -1.0);
        DisposeMergedFactors();
        merged = false;
    }

    /// <summary>
    /// Computes scaling·ΔW in float32 with the shape and layout of <c>weight</c>, from float32 copies of the factors.
    /// </summary>
    /// <param name="a">lora_A as float32.</param>
    /// <param name="b">lora_B as float32.</param>
    /// <returns>The scaled update, shaped like <c>weight</c>.</returns>
    private protected abstract Tensor DeltaWeight(Tensor a, Tensor b);

    /// <summary>
    /// Called at the start of forward while merged: if lora_A/lora_B changed since they were merged (a
    /// load_state_dict, an optimizer step, a copy_), swap the old ΔW for the new one so the merged weight stays right.
    /// </summary>
    private protected void RefreshMergedDelta()
    {
        var a = lora_A!;
        var b = lora_B!;
        var oldA = _mergedFactors![0];
        var oldB = _mergedFactors[1];
        if (SameValues(oldA, a) && SameValues(oldB, b))
        {
            return;
        }

        using var noGrad = torch.no_grad();
        AddDelta(oldA, oldB, -1.0);
        DisposeMergedFactors();
        _mergedFactors = SnapshotFactors();
        AddDelta(_mergedFactors[0], _mergedFactors[1], 1.0);
    }

    /// <summary>Applies dropout to the LoRA branch input (training mode only) and casts it to the factors' dtype.</summary>
    /// <param name="x">The layer input.</param>
    /// <returns>The branch input; <paramref name="x"/> itself when nothing needs doing.</returns>
    private protected Tensor LoraInput(Tensor x)
    {
        var input = x.dtype == lora_A!.dtype ? x : x.to(lora_A.dtype);
        return lora_dropout > 0 && training ? nn.functional.dropout(input, lora_dropout, training: true) : input;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            DisposeMergedFactors();
        }

        base.Dispose(disposing);
    }

    private static void CheckSameShape(Tensor? current, Tensor? value, string name)
    {
        if (current is not null && value is not null && !current.shape.SequenceEqual(value.shape))
        {
            throw new ArgumentException(
                $"{name} must keep its shape [{string.Join(", ", current.shape)}], got [{string.Join(", ", value.shape)}].", name);
        }
    }

    private static bool SameValues(Tensor remembered, Tensor current)
    {
        if (!remembered.device.SameAs(current.device) || remembered.dtype != current.dtype || !remembered.shape.SequenceEqual(current.shape))
        {
            return false;
        }

        return remembered.Equals(current); // torch.equal: same shape and values
    }

    private void AddDelta(Tensor a, Tensor b, double sign)
    {
        using var scope = torch.NewDisposeScope();
        var target = weight;
        var delta = DeltaWeight(a.to(ScalarType.Float32), b.to(ScalarType.Float32)).to(target.device);
        if (target.dtype == ScalarType.Float32)
        {
            target.add_(delta, alpha: sign);
        }
        else
        {
            target.copy_(target.to(ScalarType.Float32).add_(delta, alpha: sign));
        }
    }

    /// <summary>Copies of lora_A and lora_B that outlive any dispose scope (owned by this layer).</summary>
    private Tensor[] SnapshotFactors()
    {
        using var scope = torch.NewDisposeScope();
        var a = lora_A!.detach().clone();
        var b = lora_B!.detach().clone();
        return [a.DetachFromDisposeScope(), b.DetachFromDisposeScope()];
    }

    private void DisposeMergedFactors()
    {
        if (_mergedFactors is null)
        {
            return;
        }

        foreach (var t in _mergedFactors)
        {
            t.Dispose();
        }

        _mergedFactors = null;
    }
}
