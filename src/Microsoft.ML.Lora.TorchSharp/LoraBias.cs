namespace Microsoft.ML.Lora;

/// <summary>Which bias parameters train (and are saved) next to the LoRA factors, as loralib's <c>bias</c> argument.</summary>
public enum LoraBias
{
    /// <summary>No bias trains: <c>"none"</c>.</summary>
    None,

    /// <summary>Every parameter named <c>bias</c> trains: <c>"all"</c>.</summary>
    All,

    /// <summary>Only the biases of LoRA layers train: <c>"lora_only"</c>.</summary>
    LoraOnly,
}
