using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// What <see cref="LoraDataView"/> and <see cref="LoraRowMapper"/> need from a trained text model: its columns, its label
/// facts, its batch size and a batched prediction. Implemented by <c>LoraTransformer</c> (TorchSharp) and by the ONNX
/// scoring package's transformer (ONNX Runtime), which compiles this folder's shared files too.
/// </summary>
internal interface ITextScorer
{
    /// <summary>The columns the model reads and writes.</summary>
    ColumnNames Columns { get; }

    /// <summary>Task and label facts.</summary>
    LabelInfo Label { get; }

    /// <summary>Rows per batch in <c>Transform</c>.</summary>
    int InferenceBatchSize { get; }

    /// <summary>The input columns followed by the prediction columns.</summary>
    DataViewSchema GetOutputSchema(DataViewSchema inputSchema);

    /// <summary>Takes a reference for an open cursor (the model stays alive until it is released).</summary>
    /// <exception cref="ObjectDisposedException">The model was disposed.</exception>
    void AddReference();

    /// <summary>Releases a reference taken by <see cref="AddReference"/>.</summary>
    void ReleaseReference();

    /// <summary>
    /// Predicts rows: multiclass class probabilities, binary logits, or regression values in label units; row-major
    /// [texts.Count × Label.OutputCount].
    /// </summary>
    float[] Predict(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs);
}
