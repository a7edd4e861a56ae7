namespace Microsoft.ML.Lora.Engine;

/// <summary>What the tasks read of a training row, whatever its model family: the label as a class index or value.</summary>
internal interface ILabeledRow
{
    /// <summary>Class index (classification; binary 0/1).</summary>
    int Class { get; }

    /// <summary>Label value (regression; binary 0/1).</summary>
    float Value { get; }
}
