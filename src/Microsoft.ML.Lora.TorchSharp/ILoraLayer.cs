namespace Microsoft.ML.Lora;

/// <summary>
/// The state every LoRA layer exposes: its rank, the scale applied to the low-rank update, and whether that
/// update is currently folded into the base weight.
/// </summary>
public interface ILoraLayer
{
    /// <summary>Rank of the update ΔW = B·A. Zero means the layer is a plain (non-LoRA) layer.</summary>
    int r { get; }

    /// <summary>Factor applied to B·A: <c>lora_alpha / r</c>, or <c>lora_alpha / √r</c> with rsLoRA; 0 when <c>r</c> is 0.</summary>
    double scaling { get; }

    /// <summary>True while ΔW is added into <c>weight</c> (after <see cref="merge"/> or <c>eval()</c> with merge_weights).</summary>
    bool merged { get; }

    /// <summary>Adds ΔW·scaling into the base weight (computed in float32). Does nothing if already merged or <c>r</c> is 0.</summary>
    void merge();

    /// <summary>Subtracts the merged ΔW·scaling from the base weight. Does nothing if not merged.</summary>
    void unmerge();
}
