namespace Microsoft.ML.Lora.Models;

/// <summary>
/// One tokenized row before padding: <c>[CLS] a [SEP]</c> or <c>[CLS] a [SEP] b [SEP]</c>, already truncated, and how
/// many word pieces the text (and pair) had before truncation. Rows are padded into an <see cref="EncodedBatch"/> by
/// <see cref="BertTextTokenizer.Pad"/>; training keeps them to tokenize each row once.
/// </summary>
/// <remarks>This file has no TorchSharp dependency (the ONNX scoring package compiles it too).</remarks>
internal sealed class EncodedRow
{
    public EncodedRow(int[] ids, int firstSegmentLength, int sourceTokens, int specialTokens)
    {
        Ids = ids;
        FirstSegmentLength = firstSegmentLength;
        SourceTokens = sourceTokens;
        SpecialTokens = specialTokens;
    }

    /// <summary>Token ids with the special tokens.</summary>
    public int[] Ids { get; }

    /// <summary>Tokens of type 0: [CLS], the first text and its [SEP]; the rest (the pair and its [SEP]) are type 1.</summary>
    public int FirstSegmentLength { get; }

    /// <summary>Word pieces of the text (and pair) before truncation, special tokens not counted.</summary>
    public int SourceTokens { get; }

    /// <summary>Special tokens in <see cref="Ids"/> (2, or 3 with a pair).</summary>
    public int SpecialTokens { get; }

    /// <summary>Word pieces kept (special tokens not counted).</summary>
    public int KeptTokens => Ids.Length - SpecialTokens;

    /// <summary>Whether truncation cut any word piece of this row.</summary>
    public bool Truncated => KeptTokens < SourceTokens;
}
