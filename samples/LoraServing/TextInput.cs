namespace LoraServing;

/// <summary>One request row: the text to classify (the models are trained on a column named Text).</summary>
public sealed class TextInput
{
    /// <summary>The text.</summary>
    public string Text { get; set; } = string.Empty;
}
