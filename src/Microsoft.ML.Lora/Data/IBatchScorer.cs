using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// What <see cref="BatchScoringView{TInput}"/> and <see cref="RowScoringMapper{TInput}"/> need from a trained model of any
/// family: its label facts, its batch size, how it reads one row's input from a cursor (the family's part) and a batched
/// prediction; the output columns and their values come from the task (<see cref="LabelInfo.Task"/>). Implemented by
/// <c>LoraTransformer</c> and <c>LoraImageTransformer</c> (TorchSharp) and by the ONNX scoring package's transformer (ONNX
/// Runtime), which compiles this folder's shared files too.
/// </summary>
/// <typeparam name="TInput">
/// One row's model input as the family reads it (text: the row's tokens, <c>TextTokens</c>, read by
/// <see cref="TextInputReader"/>; images: the resized RGB pixels).
/// </typeparam>
internal interface IBatchScorer<TInput>
{
    /// <summary>Task and label facts.</summary>
    LabelInfo Label { get; }

    /// <summary>Rows per batch in <c>Transform</c>.</summary>
    int InferenceBatchSize { get; }

    /// <summary>The input columns the model reads.</summary>
    IReadOnlyList<string> InputColumnNames { get; }

    /// <summary>The input columns followed by the prediction columns.</summary>
    DataViewSchema GetOutputSchema(DataViewSchema inputSchema);

    /// <summary>
    /// Creates the reader of the input of <paramref name="row"/>'s current row; it throws an error naming the column and
    /// the row for a value the model cannot read.
    /// </summary>
    Func<TInput> CreateInputReader(DataViewRow row);

    /// <summary>Whether two inputs are the same (a row mapper scores a row once).</summary>
    bool SameInput(TInput a, TInput b);

    /// <summary>Takes a reference for an open cursor (the model stays alive until it is released).</summary>
    /// <exception cref="ObjectDisposedException">The model was disposed.</exception>
    void AddReference();

    /// <summary>Releases a reference taken by <see cref="AddReference"/>.</summary>
    void ReleaseReference();

    /// <summary>Predicts rows: the task's scores, row-major [inputs.Count × Label.OutputCount].</summary>
    float[] Predict(IReadOnlyList<TInput> inputs);
}
