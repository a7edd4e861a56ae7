namespace Microsoft.ML.Lora.Tests;

/// <summary>Input row with a string label (for MapValueToKey).</summary>
public sealed class TextRow
{
    public string Text { get; set; } = string.Empty;

    public string Label { get; set; } = string.Empty;
}

/// <summary>Input row with a Boolean label.</summary>
public sealed class BinaryRow
{
    public string Text { get; set; } = string.Empty;

    public bool Label { get; set; }
}

/// <summary>Input row with a Single label.</summary>
public sealed class RegressionRow
{
    public string Text { get; set; } = string.Empty;

    public float Label { get; set; }
}

/// <summary>Multiclass prediction after MapKeyToValue.</summary>
public sealed class MulticlassPrediction
{
    public float[] Score { get; set; } = [];

    public string PredictedLabel { get; set; } = string.Empty;
}

/// <summary>Binary prediction.</summary>
public sealed class BinaryPrediction
{
    public float Score { get; set; }

    public float Probability { get; set; }

    public bool PredictedLabel { get; set; }
}

/// <summary>Input row with a sentence pair and a Boolean label.</summary>
public sealed class PairRow
{
    public string Text { get; set; } = string.Empty;

    public string Pair { get; set; } = string.Empty;

    public bool Label { get; set; }
}

/// <summary>Regression prediction.</summary>
public sealed class RegressionPrediction
{
    public float Score { get; set; }
}

/// <summary>Fixed-length token vectors, as ML.NET's ApplyOnnxModel reads them.</summary>
public sealed class TokenRow
{
    public const int Length = 16;

    [Microsoft.ML.Data.ColumnName("input_ids")]
    [Microsoft.ML.Data.VectorType(Length)]
    public long[] InputIds { get; set; } = new long[Length];

    [Microsoft.ML.Data.ColumnName("attention_mask")]
    [Microsoft.ML.Data.VectorType(Length)]
    public long[] AttentionMask { get; set; } = new long[Length];

    [Microsoft.ML.Data.ColumnName("token_type_ids")]
    [Microsoft.ML.Data.VectorType(Length)]
    public long[] TokenTypeIds { get; set; } = new long[Length];
}
