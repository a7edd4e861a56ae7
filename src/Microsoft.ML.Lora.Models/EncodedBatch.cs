namespace Microsoft.ML.Lora.Models;

/// <summary>
/// A tokenized batch, padded to its longest row: row-major [BatchSize, SequenceLength] arrays of token ids,
/// attention mask (1 real, 0 padding) and token type ids (0 first segment, 1 second segment, 0 padding).
/// </summary>
/// <remarks>This file has no TorchSharp dependency: the ONNX scoring package compiles it too (as an internal type);
/// the tensor conversion is in EncodedBatch.Tensors.cs.</remarks>
#if MICROSOFT_ML_LORA_ONNX
internal
#else
public
#endif
sealed partial class EncodedBatch
{
    internal EncodedBatch(int batchSize, int sequenceLength, long[] inputIds, long[] attentionMask, long[] tokenTypeIds)
    {
        BatchSize = batchSize;
        SequenceLength = sequenceLength;
        InputIds = inputIds;
        AttentionMask = attentionMask;
        TokenTypeIds = tokenTypeIds;
    }

    /// <summary>Number of rows.</summary>
    public int BatchSize { get; }

    /// <summary>Tokens per row (the longest row; shorter rows are padded).</summary>
    public int SequenceLength { get; }

    /// <summary>Token ids, row-major [BatchSize × SequenceLength]; padding uses the vocabulary's [PAD] id.</summary>
#pragma warning disable CA1819 // Properties should not return arrays: the contract exposes the raw row-major buffers.
    public long[] InputIds { get; }

    /// <summary>Attention mask, row-major: 1 for real tokens (including [CLS]/[SEP]), 0 for padding.</summary>
    public long[] AttentionMask { get; }

    /// <summary>Token type ids, row-major: 0 for [CLS], the first text and its [SEP]; 1 for the second text and its [SEP]; 0 for padding.</summary>
    public long[] TokenTypeIds { get; }
#pragma warning restore CA1819

    /// <summary>Rows that truncation cut (their text and pair had more word pieces than the budget).</summary>
    internal int TruncatedRows { get; init; }

    /// <summary>Word pieces of the rows' texts (and pairs) before truncation, special tokens not counted.</summary>
    internal long SourceTokens { get; init; }

    /// <summary>Word pieces kept in the batch, special tokens not counted.</summary>
    internal long KeptTokens { get; init; }
}
