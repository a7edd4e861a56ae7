namespace Microsoft.ML.Lora;

/// <summary>
/// The state every LoRA layer exposes: its rank, the scale applied to the low-rank update, and whether that
/// update is currently folded into the base weight.
/// </summary>
/// <remarks>
/// A layer may hold several named adapters (see <see cref="lora.add_adapter"/>); <see cref="r"/> and <see cref="scaling"/>
/// describe the adapter named "default" (the one <c>lora.Linear(...)</c> and <see cref="lora.inject_adapter_in_model"/>
/// create), while <see cref="merge"/>, <see cref="unmerge"/> and <see cref="merged"/> cover the active adapters.
/// </remarks>
public interface ILoraLayer
{
    /// <summary>Rank of the "default" adapter's update ΔW = B·A. Zero means the layer has no "default" adapter (a plain layer unless named adapters were added).</summary>
    int r { get; }

    /// <summary>Factor applied to B·A: <c>lora_alpha / r</c>, or <c>lora_alpha / √r</c> with rsLoRA; 0 when <c>r</c> is 0.</summary>
    double scaling { get; }

    /// <summary>True while some adapter's ΔW is added into <c>weight</c> (after <see cref="merge"/> or <c>eval()</c> with merge_weights).</summary>
    bool merged { get; }

    /// <summary>Adds ΔW·scaling of every active adapter not yet merged into the base weight (computed in float32).</summary>
    void merge();

    /// <summary>Removes every merged ΔW·scaling: the weight gets back the exact base weight. Does nothing if not merged.</summary>
    void unmerge();
}
