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
/// <para>Merging is a cache, never part of the layer's state (loralib #190). While merged, the layer keeps an exact copy of
/// the base weight W, and <c>state_dict()</c> reports that W under <c>weight</c> (beside the factors), so a checkpoint
/// taken in <c>eval()</c> equals one taken in <c>train()</c> and never mixes W with ΔW. Values written through a
/// <c>state_dict()</c> (as <c>load_state_dict</c> does) or into <c>lora_A</c>/<c>lora_B</c> while merged are picked up by
/// the next forward, <c>state_dict()</c>, <c>merge()</c>, <c>unmerge()</c> or <c>train()</c>, which rebuild the merged weight
/// from them: loading a checkpoint into a merged layer gives the same model as loading it unmerged, and <c>train()</c>
/// restores W bit for bit. The <see cref="weight"/> parameter itself holds W + ΔW while merged (that is what forward
/// uses); a tensor returned by <c>state_dict()</c> while merged is a copy, read back only until the layer's next use.
/// The cost is one extra copy of the base weight per merged layer. TorchSharp's <c>Sequential</c> builds its
/// <c>state_dict()</c> from <c>named_parameters()</c> without asking its children, so a merged layer directly inside a
/// <c>Sequential</c> shows its live W + ΔW there: call <c>train()</c> (or <see cref="unmerge"/>) before saving such a
/// model; modules held in fields or a <c>ModuleList</c> are not affected.</para>
/// <para>Named adapters (PEFT semantics): the adapter "default" keeps the loralib parameters <c>lora_A</c>/<c>lora_B</c>
/// (state_dict keys <c>&lt;path&gt;.lora_A</c>); any other adapter <c>n</c> lives in the child module
/// <c>lora_adapters.n</c> (keys <c>&lt;path&gt;.lora_adapters.n.lora_A</c>). Forward adds the updates of all
/// <see cref="active_adapters"/>, each with its own rank, scaling and dropout. <see cref="r"/>, <see cref="scaling"/>,
/// <see cref="lora_A"/>, <see cref="lora_B"/> describe "default"; <c>get_lora_A(name)</c> etc. reach the others.
/// Model-level operations live on <see cref="lora"/> (<c>add_adapter</c>, <c>set_adapter</c>, …).</para>
/// </remarks>
public abstract class LoraLayer : nn.Module<Tensor, Tensor>, ILoraLayer
{
    /// <summary>The adapter name whose factors are the layer's own <c>lora_A</c>/<c>lora_B</c> (state_dict keys <c>&lt;path&gt;.lora_A</c>).</summary>
    internal const string DefaultAdapter = "default";

    /// <summary>The per-row adapter name that means "no adapter" in a mixed batch.</summary>
    internal const string BaseRow = "__base__";

    [ComponentName(Name = "weight")]
    private Parameter _weight;

    [ComponentName(Name = "bias")]
    private Parameter? _bias;

    [ComponentName(Name = "lora_A")]
    private Parameter? _lora_A;

    [ComponentName(Name = "lora_B")]
    private Parameter? _lora_B;

    // Adapters in the order they were added. Arrays/lists of plain objects: RegisterComponents is never called here,
    // and none of these is a Tensor field, so nothing is registered as a buffer.
    private readonly List<AdapterSlot> _adapters = [];
    private readonly Dictionary<string, LoraFactors> _extraFactors = new(StringComparer.Ordinal);
    private LoraAdapterModules? _adapterModules;
    private List<string> _active = [];
    private string[]? _rowAdapters;

    // The exact base weight W while any adapter is merged (weight then holds W + ΣΔW), and the copies of it that
    // state_dict() handed out since the layer was last used; null while nothing is merged. Not a Tensor field, so it is
    // never registered as a buffer.
    private MergedBase? _mergedBase;

    private readonly double _ctorAlpha;
    private readonly double _ctorDropout;
    private readonly bool _ctorRslora;

    private protected LoraLayer(string name, Parameter weight, Parameter? bias, int r, double lora_alpha,
        double lora_dropout, bool merge_weights, bool use_rslora)
        : base(name)
    {
        ArgumentNullException.ThrowIfNull(weight);
        LoraArguments.Check(r, lora_alpha, lora_dropout);

        _ctorAlpha = lora_alpha;
        _ctorDropout = lora_dropout;
        _ctorRslora = use_rslora;
        this.merge_weights = merge_weights;

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

    /// <summary>Rank of the "default" adapter; 0 when the layer has no adapter named "default".</summary>
    public int r => Default?.R ?? 0;

    /// <summary>The α of the "default" adapter; <see cref="scaling"/> is α/r (α/√r with <see cref="use_rslora"/>).</summary>
    public double lora_alpha => Default?.Alpha ?? _ctorAlpha;

    /// <summary>Dropout probability of the "default" adapter's branch input (training mode only).</summary>
    public double lora_dropout => Default?.Dropout ?? _ctorDropout;

    /// <summary>When true, <c>eval()</c> merges the active adapters into <c>weight</c> and <c>train()</c> unmerges them.</summary>
    public bool merge_weights { get; }

    /// <summary>Rank-stabilised LoRA for the "default" adapter: scaling is α/√r instead of α/r.</summary>
    public bool use_rslora => Default?.UseRslora ?? _ctorRslora;

    /// <summary>Scaling of the "default" adapter; 0 when there is none.</summary>
    public double scaling => Default?.Scaling ?? 0.0;

    /// <summary>True while at least one adapter's ΔW is added into <c>weight</c>.</summary>
    public bool merged => _adapters.Any(a => a.Merged is not null);

    /// <summary>Names of the adapters this layer holds, in the order they were added.</summary>
    public IReadOnlyList<string> adapter_names => _adapters.Select(a => a.Name).ToList();

    /// <summary>
    /// Whether a training forward with gradients runs each adapter branch that has dropout so that its backward keeps
    /// the branch input (shared with the base layer and the other branches) and a one-byte dropout mask, and computes the
    /// dropped input again, instead of keeping the dropped input and a float scale tensor (two full-size tensors per
    /// branch). Same output and random draws; gradients agree to rounding. Set by models under selective recomputation
    /// (<c>Recomputation.Selective</c>); layer kinds and devices without such a path ignore it (linear layers on the CPU
    /// have one).
    /// </summary>
    internal bool RecomputeDroppedInput { get; set; }

    /// <summary>Names of the adapters whose updates forward adds (summed), in order.</summary>
    public IReadOnlyList<string> active_adapters => _active.ToList();

    /// <summary>True inside <see cref="lora.disable_adapter"/>: forward runs the base layer alone.</summary>
    public bool disable_adapters { get; internal set; }

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
            WeightVersion++;
            if (_mergedBase is not null)
            {
                // The new parameter is the base weight W; the merged updates go back on top of it.
                using var noGrad = torch.no_grad();
                _mergedBase.Weight.copy_(value);
                RebuildMergedWeight();
            }
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
        set => SetFactor(ref _lora_A, value, "lora_A");
    }

    /// <summary>The up-projection factor B (initialised to zero except for Embedding); null when <c>r</c> is 0.</summary>
    /// <exception cref="ArgumentException">The new value's shape differs from the current one.</exception>
    public Parameter? lora_B
    {
        get => _lora_B;
        set => SetFactor(ref _lora_B, value, "lora_B");
    }

    // A factor, once there, can only be replaced by one of the same shape (never removed).
    private void SetFactor(ref Parameter? field, Parameter? value, string name)
    {
        if (field is not null)
        {
            ArgumentNullException.ThrowIfNull(value, name);
            CheckSameShape(field, value, name);
        }

        field = value?.DetachFromDisposeScope() as Parameter;
        ConditionallyRegisterParameter(name, field);
    }

    /// <summary>
    /// Sets training mode on this layer and its children; when <see cref="merge_weights"/> is set,
    /// <c>train(false)</c> merges the active adapters into <c>weight</c> and <c>train(true)</c> removes them.
    /// </summary>
    /// <param name="train">True for training mode, false for evaluation mode.</param>
    public override void train(bool train = true)
    {
        base.train(train);
        if (!merge_weights)
        {
            return;
        }

        if (train)
        {
            unmerge();
        }
        else if (!disable_adapters)
        {
            merge();
        }
    }

    /// <summary>
    /// Adds ΔW·scaling of every active adapter not yet merged into the base weight (computed in float32). Does nothing
    /// when the layer has no active adapter.
    /// </summary>
    public void merge() => MergeAdapters(_active);

    /// <summary>
    /// Removes every merged ΔW: <c>weight</c> gets back the exact base weight W it had before merging (or the W loaded since).
    /// Does nothing if nothing is merged.
    /// </summary>
    public void unmerge()
    {
        using var noGrad = torch.no_grad();
        Reconcile();
        foreach (var slot in _adapters)
        {
            DisposeMerged(slot);
        }

        RestoreBaseWeight();
    }

    /// <summary>
    /// The layer's state: parameters and buffers by name, as <c>nn.Module.state_dict</c>. While adapters are merged,
    /// <c>weight</c> is the unmerged base weight W (a copy; ΔW is never mixed in), so the result is the same in
    /// <c>train()</c> and <c>eval()</c>; values <c>load_state_dict</c> writes into it are applied on the layer's next use.
    /// </summary>
    /// <param name="destination">Dictionary to add the entries to (default: a new one).</param>
    /// <param name="prefix">Prefix of the keys (the layer's path in its model), or null.</param>
    /// <returns>The dictionary.</returns>
    public override Dictionary<string, Tensor> state_dict(Dictionary<string, Tensor>? destination = null, string? prefix = null)
    {
        Reconcile();
        var result = base.state_dict(destination, prefix);
        if (_mergedBase is not null)
        {
            var copy = _mergedBase.Weight.detach().clone().DetachFromDisposeScope();
            _mergedBase.HandedOut.Add(copy);
            result[string.IsNullOrEmpty(prefix) ? "weight" : prefix + ".weight"] = copy;
        }

        return result;
    }

    /// <summary>
    /// The update scaling·B·A of adapter <paramref name="adapter_name"/> in float32, shaped like <c>weight</c>
    /// (a new tensor owned by the caller).
    /// </summary>
    /// <param name="adapter_name">The adapter (default "default").</param>
    /// <returns>ΔW as float32, on the weight's device.</returns>
    /// <exception cref="ArgumentException">The layer has no adapter of that name.</exception>
    public Tensor get_delta_weight(string adapter_name = DefaultAdapter)
    {
        var slot = Slot(adapter_name);
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var (a, b) = Factors(slot);
        return DeltaWeight(a.detach().to(ScalarType.Float32), b.detach().to(ScalarType.Float32), slot.R, slot.Scaling)
            .to(weight.device).MoveToOuterDisposeScope();
    }

    /// <summary>The A factor of adapter <paramref name="adapter_name"/> (for "default" the same as <see cref="lora_A"/>).</summary>
    /// <param name="adapter_name">The adapter.</param>
    /// <returns>The parameter.</returns>
    /// <exception cref="ArgumentException">The layer has no adapter of that name.</exception>
    public Parameter get_lora_A(string adapter_name) => Factors(Slot(adapter_name)).a;

    /// <summary>The B factor of adapter <paramref name="adapter_name"/> (for "default" the same as <see cref="lora_B"/>).</summary>
    /// <param name="adapter_name">The adapter.</param>
    /// <returns>The parameter.</returns>
    /// <exception cref="ArgumentException">The layer has no adapter of that name.</exception>
    public Parameter get_lora_B(string adapter_name) => Factors(Slot(adapter_name)).b;

    /// <summary>Rank of adapter <paramref name="adapter_name"/>.</summary>
    /// <param name="adapter_name">The adapter.</param>
    /// <returns>Its rank.</returns>
    public int get_rank(string adapter_name) => Slot(adapter_name).R;

    /// <summary>Scaling (α/r or α/√r) of adapter <paramref name="adapter_name"/>.</summary>
    /// <param name="adapter_name">The adapter.</param>
    /// <returns>Its scaling.</returns>
    public double get_scaling(string adapter_name) => Slot(adapter_name).Scaling;

    /// <summary>α of adapter <paramref name="adapter_name"/>.</summary>
    /// <param name="adapter_name">The adapter.</param>
    /// <returns>Its α.</returns>
    public double get_lora_alpha(string adapter_name) => Slot(adapter_name).Alpha;

    /// <summary>
    /// Applies the base layer plus the update of every active adapter (summed); merged adapters are already inside
    /// <c>weight</c>. Inside <see cref="lora.disable_adapter"/> only the base layer runs; inside
    /// <see cref="lora.adapter_names_scope"/> each row (dimension 0) gets the update of its own adapter.
    /// </summary>
    /// <param name="input">The input tensor.</param>
    /// <returns>The output tensor.</returns>
    public override Tensor forward(Tensor input)
    {
        if (disable_adapters)
        {
            unmerge();
            return BaseForward(input);
        }

        Reconcile();

        if (_rowAdapters is not null)
        {
            return MixedForward(input, _rowAdapters);
        }

        var pending = _active.Select(Find).Where(slot => slot is not null && slot.Merged is null).ToList();
        if (pending.Count > 0 && pending.All(slot => slot!.Dropout == 0 || !training))
        {
            var fused = FusedForward(input, pending.Select(slot => ((Tensor)Factors(slot!).a, (Tensor)Factors(slot!).b, slot!.Scaling)).ToList());
            if (fused is not null)
            {
                return fused;
            }
        }

        var result = BaseForward(input);
        foreach (var name in _active)
        {
            var slot = Find(name);
            if (slot is null || slot.Merged is not null)
            {
                continue;
            }

            var (a, b) = Factors(slot);
            if (RecomputeDroppedInput && slot.Dropout > 0 && training && is_grad_enabled()
                && RecomputingDropoutForward(input, a, b, slot.Dropout) is { } recomputing)
            {
                using (recomputing)
                {
                    using var update = recomputing.dtype == result.dtype ? recomputing.alias() : recomputing.to(result.dtype);
                    result = result.add_(update, alpha: slot.Scaling);
                }

                continue;
            }

            var x = AdapterInput(input, a.dtype, slot.Dropout);
            try
            {
                using var up = AdapterForward(x, a, b, slot.R);
                using var update = up.dtype == result.dtype ? up.alias() : up.to(result.dtype);
                result = result.add_(update, alpha: slot.Scaling);
            }
            finally
            {
                if (!ReferenceEquals(x, input))
                {
                    x.Dispose();
                }
            }
        }

        return result;
    }

    /// <summary>The base layer's output (frozen <c>weight</c>/<c>bias</c>, including merged updates).</summary>
    /// <param name="input">The layer input.</param>
    /// <returns>A new tensor.</returns>
    private protected abstract Tensor BaseForward(Tensor input);

    /// <summary>The unscaled low-rank update for input <paramref name="x"/> with factors a, b of rank r, shaped like the output.</summary>
    private protected abstract Tensor AdapterForward(Tensor x, Tensor a, Tensor b, int r);

    /// <summary>New, uninitialised-by-caller A and B factors of rank <paramref name="r"/>, initialised per <paramref name="init"/>.</summary>
    private protected abstract (Tensor a, Tensor b) CreateFactors(int r, LoraInitKind init);

    /// <summary>
    /// Computes scaling·ΔW in float32 with the shape and layout of <c>weight</c>, from float32 copies of the factors.
    /// </summary>
    private protected abstract Tensor DeltaWeight(Tensor a, Tensor b, int r, double scaling);

    /// <summary>
    /// The unscaled update of an adapter with dropout whose backward keeps the branch input and a one-byte dropout mask
    /// and computes the dropped input again (<see cref="RecomputeDroppedInput"/>), with the values and random draws of
    /// <see cref="AdapterInput"/> + <see cref="AdapterForward"/>; null where the layer kind or device has none.
    /// </summary>
    private protected virtual Tensor? RecomputingDropoutForward(Tensor input, Tensor a, Tensor b, double dropout) => null;

    /// <summary>
    /// The whole output in one operation when the layer kind can fold the unmerged active adapters (no dropout on their
    /// input) into its kernel, or null to use base output plus adapter branches.
    /// </summary>
    /// <param name="input">The layer input.</param>
    /// <param name="adapters">Factors and scaling of each active adapter not merged into <c>weight</c>.</param>
    private protected virtual Tensor? FusedForward(Tensor input, IReadOnlyList<(Tensor a, Tensor b, double scaling)> adapters) => null;

    /// <summary>Throws if an adapter of rank <paramref name="r"/> cannot be added to this layer.</summary>
    /// <param name="r">The rank.</param>
    private protected virtual void CheckRank(int r)
    {
    }

    /// <summary>The branch input: cast to the factors' dtype, with dropout in training mode. May be <paramref name="x"/> itself.</summary>
    private protected virtual Tensor AdapterInput(Tensor x, ScalarType factorDtype, double dropout)
    {
        var input = x.dtype == factorDtype ? x : x.to(factorDtype);
        if (dropout > 0 && training)
        {
            var dropped = nn.functional.dropout(input, dropout, training: true);
            if (!ReferenceEquals(input, x))
            {
                input.Dispose();
            }

            return dropped;
        }

        return input;
    }

    // ----- adapter management (used by lora's model-level operations) -----

    /// <summary>True when the layer holds an adapter named <paramref name="name"/>.</summary>
    internal bool HasAdapter(string name) => Find(name) is not null;

    /// <summary>Adds a new adapter with fresh factors; it is not activated.</summary>
    internal void AddAdapter(string name, int rank, double alpha, double dropout, bool rslora, LoraInitKind init, LoraConfig? config)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (HasAdapter(name))
        {
            throw new ArgumentException($"The layer already has an adapter named '{name}'.", nameof(name));
        }

        if (rank <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, "An adapter's rank must be positive.");
        }

        LoraArguments.Check(rank, alpha, dropout);
        CheckRank(rank);
        var (a, b) = CreateFactors(rank, init);
        var pa = LoraArguments.NewParameter(a);
        var pb = LoraArguments.NewParameter(b);
        if (name == DefaultAdapter)
        {
            _lora_A = pa;
            _lora_B = pb;
            ConditionallyRegisterParameter("lora_A", _lora_A);
            ConditionallyRegisterParameter("lora_B", _lora_B);
        }
        else
        {
            if (_adapterModules is null)
            {
                _adapterModules = new LoraAdapterModules();
                _adapterModules.train(training);
                register_module("lora_adapters", _adapterModules);
            }

            var factors = new LoraFactors(pa, pb);
            factors.train(training);
            _adapterModules.Add(name, factors);
            _extraFactors[name] = factors;
        }

        var scale = rslora ? alpha / Math.Sqrt(rank) : alpha / rank;
        _adapters.Add(new AdapterSlot(name, rank, alpha, dropout, rslora, scale, config));
        weight.requires_grad = false;
    }

    /// <summary>Removes adapter <paramref name="name"/> (unmerging it first).</summary>
    internal void DeleteAdapter(string name)
    {
        var slot = Slot(name);
        using (torch.no_grad())
        {
            Reconcile();
            if (slot.Merged is not null)
            {
                DisposeMerged(slot);
                if (merged)
                {
                    RebuildMergedWeight();
                }
                else
                {
                    RestoreBaseWeight();
                }
            }
        }

        _adapters.Remove(slot);
        _active.Remove(name);
        if (name == DefaultAdapter)
        {
            _lora_A?.Dispose();
            _lora_B?.Dispose();
            _lora_A = null;
            _lora_B = null;
            ConditionallyRegisterParameter("lora_A", null);
            ConditionallyRegisterParameter("lora_B", null);
        }
        else
        {
            var old = _adapterModules!;
            _extraFactors.Remove(name, out var removed);
            var rebuilt = new LoraAdapterModules();
            rebuilt.train(training);
            foreach (var (other, factors) in _extraFactors)
            {
                rebuilt.Add(other, factors);
            }

            ModuleRegistry.Replace(this, "lora_adapters", rebuilt);
            _adapterModules = rebuilt;
            removed!.Dispose();
            GC.KeepAlive(old);
        }
    }

    /// <summary>
    /// Sets which adapters forward adds (names this layer lacks are kept and skipped). Unmerges first; a layer that was
    /// merged merges the new active set again.
    /// </summary>
    internal void SetActive(IReadOnlyList<string> names)
    {
        var wasMerged = merged;
        if (wasMerged)
        {
            unmerge();
        }

        _active = names.Distinct(StringComparer.Ordinal).ToList();
        foreach (var slot in _adapters)
        {
            var on = _active.Contains(slot.Name);
            var (a, b) = Factors(slot);
            a.requires_grad = on;
            b.requires_grad = on;
        }

        if (wasMerged)
        {
            merge();
        }
    }

    /// <summary>
    /// Counts the changes this layer made to <c>weight</c> (merging, unmerging, rebuilding the merged weight after the
    /// factors changed, replacing the parameter): a caller that caches something computed from <c>weight</c> compares it.
    /// Writes into <c>weight</c> from outside the layer are not counted.
    /// </summary>
    internal long WeightVersion { get; private set; }

    /// <summary>
    /// Brings a merged <c>weight</c> up to date with the factors (as forward does) and tells whether forward is then exactly
    /// the base operation on <c>weight</c> and <c>bias</c>: adapters enabled, no per-row adapters, and every active
    /// adapter of this layer merged (or none active). Used by callers that fold the layer into a following operation.
    /// </summary>
    internal bool ForwardIsMergedBase()
    {
        if (disable_adapters || _rowAdapters is not null)
        {
            return false;
        }

        Reconcile();
        return _active.All(name => Find(name) is not { } slot || slot.Merged is not null);
    }

    /// <summary>Per-row adapter names for the next forwards (null to stop).</summary>
    internal void SetRowAdapters(string[]? names) => _rowAdapters = names;

    /// <summary>The config an adapter was created from (null for layers built directly or by weighting).</summary>
    internal LoraConfig? ConfigOf(string name) => Slot(name).Config;

    /// <summary>Dropout of an adapter.</summary>
    internal double DropoutOf(string name) => Slot(name).Dropout;

    /// <summary>Whether an adapter uses rsLoRA scaling.</summary>
    internal bool RsloraOf(string name) => Slot(name).UseRslora;

    /// <summary>Merges the named adapters (those this layer lacks are skipped).</summary>
    internal void MergeAdapters(IEnumerable<string> names)
    {
        using var noGrad = torch.no_grad();
        Reconcile();
        foreach (var name in names.ToList())
        {
            var slot = Find(name);
            if (slot is null || slot.Merged is not null)
            {
                continue;
            }

            _mergedBase ??= new MergedBase(weight.detach().clone().DetachFromDisposeScope());
            slot.Merged = SnapshotFactors(slot);
            AddDelta(slot.Merged[0], slot.Merged[1], slot, 1.0);
        }
    }

    /// <summary>
    /// Forgets the merge bookkeeping (the copy of W and the merged factors) without touching <c>weight</c>: used when the
    /// merged weight is handed to a plain module and this layer is discarded.
    /// </summary>
    internal void ForgetMergeState()
    {
        foreach (var slot in _adapters)
        {
            DisposeMerged(slot);
        }

        _mergedBase?.Weight.Dispose();
        _mergedBase = null;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var slot in _adapters)
            {
                DisposeMerged(slot);
            }

            _mergedBase?.Weight.Dispose();
            _mergedBase = null;
        }

        base.Dispose(disposing);
    }

    private AdapterSlot? Default => Find(DefaultAdapter);

    private AdapterSlot? Find(string name)
    {
        foreach (var slot in _adapters)
        {
            if (slot.Name == name)
            {
                return slot;
            }
        }

        return null;
    }

    private AdapterSlot Slot(string adapter_name)
    {
        ArgumentNullException.ThrowIfNull(adapter_name);
        return Find(adapter_name) ?? throw new ArgumentException(
            $"The layer has no adapter named '{adapter_name}'; it has [{string.Join(", ", _adapters.Select(a => a.Name))}].", nameof(adapter_name));
    }

    private (Parameter a, Parameter b) Factors(AdapterSlot slot) => slot.Name == DefaultAdapter
        ? (_lora_A!, _lora_B!)
        : (_extraFactors[slot.Name].lora_A, _extraFactors[slot.Name].lora_B);

    private Tensor MixedForward(Tensor input, string[] adapter_names)
    {
        if (merged)
        {
            throw new InvalidOperationException(
                "A mixed-adapter batch cannot run while adapters are merged into the weight; call unmerge() or train() first.");
        }

        var rows = adapter_names;
        if (input.dim() == 0 || input.shape[0] != rows.Length)
        {
            throw new ArgumentException(
                $"The batch has {(input.dim() == 0 ? 0 : input.shape[0])} rows but {adapter_names.Length} per-row adapter names were given.", nameof(adapter_names));
        }

        var result = BaseForward(input);
        foreach (var name in rows.Distinct(StringComparer.Ordinal))
        {
            var slot = name == BaseRow ? null : Find(name);
            if (slot is null)
            {
                continue; // "__base__", or an adapter this layer does not have: base output only
            }

            using var scope = torch.NewDisposeScope();
            var picked = Enumerable.Range(0, rows.Length).Where(i => rows[i] == name).Select(i => (long)i).ToArray();
            var index = torch.tensor(picked, dtype: ScalarType.Int64, device: input.device);
            var sub = input.index_select(0, index);
            var (a, b) = Factors(slot);
            var x = AdapterInput(sub, a.dtype, slot.Dropout);
            var up = AdapterForward(x, a, b, slot.R);
            var update = up.dtype == result.dtype ? up : up.to(result.dtype);
            result = result.index_add_(0, index, update, alpha: slot.Scaling);
        }

        return result;
    }

    /// <summary>
    /// Brings a merged layer up to date with what was written since its last use: a base weight W loaded through a
    /// tensor that <see cref="state_dict"/> handed out, and factors that changed since they were merged (a
    /// load_state_dict, an optimizer step, a copy_). Rebuilds <c>weight</c> = W + ΣΔW when anything changed.
    /// </summary>
    private void Reconcile()
    {
        if (_mergedBase is null)
        {
            return;
        }

        using var noGrad = torch.no_grad();
        var changed = false;
        if (!_mergedBase.Weight.device.SameAs(weight.device) || _mergedBase.Weight.dtype != weight.dtype)
        {
            // The module was moved (.to(device/dtype)) while merged; the copy of W follows it.
            var moved = _mergedBase.Weight.to(weight.dtype, weight.device).DetachFromDisposeScope();
            _mergedBase.Weight.Dispose();
            _mergedBase.Weight = moved;
        }

        foreach (var handedOut in _mergedBase.HandedOut)
        {
            // The caller's dictionary may still hold these copies: dropped here, never disposed.
            if (handedOut.IsInvalid || SameValues(_mergedBase.Weight, handedOut))
            {
                continue;
            }

            _mergedBase.Weight.copy_(handedOut);
            changed = true;
        }

        _mergedBase.HandedOut.Clear();
        foreach (var slot in _adapters)
        {
            if (slot.Merged is null)
            {
                continue;
            }

            var (a, b) = Factors(slot);
            if (SameValues(slot.Merged[0], a) && SameValues(slot.Merged[1], b))
            {
                continue;
            }

            DisposeMerged(slot);
            slot.Merged = SnapshotFactors(slot);
            changed = true;
        }

        if (changed)
        {
            RebuildMergedWeight();
        }
    }

    /// <summary><c>weight</c> = W + ΔW of every merged adapter (ΔW in float32, from the factors as merged).</summary>
    private void RebuildMergedWeight()
    {
        using var noGrad = torch.no_grad();
        weight.copy_(_mergedBase!.Weight);
        WeightVersion++;
        foreach (var slot in _adapters)
        {
            if (slot.Merged is not null)
            {
                AddDelta(slot.Merged[0], slot.Merged[1], slot, 1.0);
            }
        }
    }

    /// <summary>Puts the exact base weight back into <c>weight</c> and forgets it (nothing is merged any more).</summary>
    private void RestoreBaseWeight()
    {
        if (_mergedBase is null)
        {
            return;
        }

        using var noGrad = torch.no_grad();
        weight.copy_(_mergedBase.Weight);
        WeightVersion++;
        _mergedBase.Weight.Dispose();
        _mergedBase = null;
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

    private void AddDelta(Tensor a, Tensor b, AdapterSlot slot, double sign)
    {
        using var scope = torch.NewDisposeScope();
        WeightVersion++;
        var target = weight;
        var delta = DeltaWeight(a.to(ScalarType.Float32), b.to(ScalarType.Float32), slot.R, slot.Scaling).to(target.device);
        if (target.dtype == ScalarType.Float32)
        {
            target.add_(delta, alpha: sign);
        }
        else
        {
            target.copy_(target.to(ScalarType.Float32).add_(delta, alpha: sign));
        }
    }

    /// <summary>Copies of the adapter's factors that outlive any dispose scope (owned by this layer).</summary>
    private Tensor[] SnapshotFactors(AdapterSlot slot)
    {
        using var scope = torch.NewDisposeScope();
        var (fa, fb) = Factors(slot);
        var a = fa.detach().clone();
        var b = fb.detach().clone();
        return [a.DetachFromDisposeScope(), b.DetachFromDisposeScope()];
    }

    private static void DisposeMerged(AdapterSlot slot)
    {
        if (slot.Merged is null)
        {
            return;
        }

        foreach (var t in slot.Merged)
        {
            t.Dispose();
        }

        slot.Merged = null;
    }

    /// <summary>One named adapter's settings and merge state (the factors live in parameters).</summary>
    private sealed class AdapterSlot(string name, int r, double alpha, double dropout, bool useRslora, double scaling, LoraConfig? config)
    {
        public string Name { get; } = name;

        public int R { get; } = r;

        public double Alpha { get; } = alpha;

        public double Dropout { get; } = dropout;

        public bool UseRslora { get; } = useRslora;

        public double Scaling { get; } = scaling;

        public LoraConfig? Config { get; } = config;

        public Tensor[]? Merged { get; set; }
    }

    /// <summary>The exact base weight of a merged layer and the copies of it handed out by <c>state_dict()</c>.</summary>
    private sealed class MergedBase(Tensor weight)
    {
        public Tensor Weight { get; set; } = weight;

        public List<Tensor> HandedOut { get; } = [];
    }
}
