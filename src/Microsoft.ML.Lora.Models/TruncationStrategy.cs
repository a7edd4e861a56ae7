namespace Microsoft.ML.Lora.Models;

/// <summary>Which tokens of a text longer than the maximum sequence length are kept.</summary>
/// <remarks>
/// Either way the whole text is tokenized first (so the cut can be counted and the tail found). With a text pair, the
/// budget is first shared between the two texts longest-first (as Hugging Face's tokenizers do), then each text keeps
/// its share by the same strategy.
/// </remarks>
#if MICROSOFT_ML_LORA_ONNX
internal
#else
public
#endif
enum TruncationStrategy
{
    /// <summary>The first tokens (Hugging Face's default truncation).</summary>
    Head,

    /// <summary>
    /// The first and the last tokens, in the proportion Sun et al. (2019, "How to Fine-Tune BERT for Text
    /// Classification?") found best for long reviews: 128 head and 382 tail tokens of a 510-token budget, scaled to the
    /// budget (head = round(budget × 128 / 510), the rest from the end).
    /// </summary>
    HeadTail,
}
