namespace Microsoft.ML.Lora;

/// <summary>
/// Which modules of an existing model get LoRA and with what settings; mirrors PEFT's <c>LoraConfig</c>
/// (same snake_case names and defaults) and is consumed by <see cref="lora.inject_adapter_in_model"/>.
/// </summary>
public sealed class LoraConfig
{
    /// <summary>The name of <see cref="target_modules"/> that selects every linear layer except output heads.</summary>
    public const string AllLinear = "all-linear";

    /// <summary>Rank of the update (default 8). Must be positive.</summary>
    public int r { get; set; } = 8;

    /// <summary>α; the update is scaled by α/r, or α/√r with <see cref="use_rslora"/> (default 8).</summary>
    public double lora_alpha { get; set; } = 8;

    /// <summary>Dropout on the LoRA branch input, in [0, 1) (default 0). Not used by embeddings.</summary>
    public double lora_dropout { get; set; }

    /// <summary>
    /// Module names to adapt: a name matches a module path when it equals it or is a dot-aligned suffix of it
    /// (<c>query</c>, <c>attention.output.dense</c>); or the single name <c>"all-linear"</c>: every Linear except output
    /// heads (last name segment <c>lm_head</c>, <c>classifier</c>, <c>score</c> or <c>qa_outputs</c>) and
    /// <see cref="modules_to_save"/>. Ignored when
    /// <see cref="target_modules_regex"/> is set.
    /// </summary>
    public IList<string>? target_modules { get; set; }

    /// <summary>A regular expression that must match a whole module path (PEFT's string form of target_modules).</summary>
    public string? target_modules_regex { get; set; }

    /// <summary>Module names (exact or dot-aligned suffix) never adapted, even if targeted.</summary>
    public IList<string>? exclude_modules { get; set; }

    /// <summary>A regular expression; modules whose whole path matches it are never adapted (PEFT's string form of exclude_modules).</summary>
    public string? exclude_modules_regex { get; set; }

    /// <summary>
    /// Layer indices to adapt (PEFT's <c>layers_to_transform</c>): a module found by a dot-aligned suffix of
    /// <see cref="target_modules"/> is adapted only if its path holds <c>.&lt;pattern&gt;.&lt;index&gt;.</c> with the index in this
    /// list (the first such segment, as PEFT ≥ 0.20, so an expert index nested inside a layer does not count; pattern from
    /// <see cref="layers_pattern"/>, or any name). Null (default): all layers.
    /// Not allowed with <see cref="target_modules_regex"/>.
    /// </summary>
    public IList<int>? layers_to_transform { get; set; }

    /// <summary>Names of the module lists that hold the layers (e.g. <c>layer</c>, <c>layers</c>, <c>h</c>), used with <see cref="layers_to_transform"/>.</summary>
    public IList<string>? layers_pattern { get; set; }

    /// <summary>
    /// Per-module ranks: key is a pattern matched as <c>(.*\.)?(key)$</c> against the module path; the first matching key
    /// wins; unmatched modules use <see cref="r"/>.
    /// </summary>
    public IDictionary<string, int> rank_pattern { get; set; } = new Dictionary<string, int>();

    /// <summary>Per-module α, matched as <see cref="rank_pattern"/>; unmatched modules use <see cref="lora_alpha"/>.</summary>
    public IDictionary<string, double> alpha_pattern { get; set; } = new Dictionary<string, double>();

    /// <summary>
    /// Modules (exact or dot-aligned suffix names) trained in full next to the adapter, e.g. a classifier head. As in PEFT,
    /// each adapter has its own copy of them; the module in the model shows the active adapter's copy (see
    /// <see cref="lora.set_adapter"/>), so its <c>state_dict()</c> keys do not change.
    /// </summary>
    public IList<string>? modules_to_save { get; set; }

    /// <summary>Which biases train: "none" (default), "all" or "lora_only".</summary>
    public string bias { get; set; } = "none";

    /// <summary>Scale by α/√r instead of α/r (default false).</summary>
    public bool use_rslora { get; set; }

    /// <summary>Set when the targeted linear weights are stored (in × out), as GPT-2's Conv1D (default false).</summary>
    public bool fan_in_fan_out { get; set; }

    /// <summary>"true" (default: A kaiming-uniform, B zeros), "gaussian" (A normal std 1/r) or "false" (random B: ΔW ≠ 0).</summary>
    public string init_lora_weights { get; set; } = "true";

    /// <summary>Whether the injected layers merge on <c>eval()</c> and unmerge on <c>train()</c> (default true).</summary>
    public bool merge_weights { get; set; } = true;
}
