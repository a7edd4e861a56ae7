namespace Microsoft.ML.Lora.Engine;

/// <summary>A model family's training rows, streamed from an <see cref="IDataView"/> in data order, labelled rows only.</summary>
/// <typeparam name="TRow">The family's row (its inputs and the label).</typeparam>
internal interface ITrainingRows<TRow>
    where TRow : ILabeledRow
{
    /// <summary>Streams the rows in data order (one cursor pass).</summary>
    IEnumerable<TRow> Rows();

    /// <summary>Lines for the training log after the first complete pass (none by default).</summary>
    IEnumerable<string> FirstPassSummary() => [];
}
