using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// The lazy result of a model's <c>Transform</c> for every model family (<see cref="IBatchScorer{TInput}"/>; text, images,
/// and the ONNX scoring package, which compiles this file too): input columns pass through and the prediction columns are
/// computed when a cursor asks for them, one forward pass per <c>InferenceBatchSize</c> rows. A second input cursor over
/// the model's input columns runs ahead to fill each batch, reading each row's input once, so only the inputs of one batch
/// (or one window) are held.
/// </summary>
/// <remarks>
/// Length grouping (a <c>groupingLength</c> is given): the look-ahead reads a window of
/// <see cref="LengthGrouping.InferenceWindowBatches"/> batches, sorts it by the inputs' lengths (stable), predicts it in
/// batches of similar length (less padding) and puts each row's outputs back in its place, so the row order is unchanged.
/// The text family's length is the row's token count: the inputs are the tokens, read once and scored as they are.
/// </remarks>
/// <typeparam name="TInput">One row's model input.</typeparam>
internal sealed class BatchScoringView<TInput> : IDataView
{
    private readonly IDataView input;
    private readonly IBatchScorer<TInput> parent;
    private readonly Func<TInput, int>? groupingLength;

    /// <param name="input">The input data.</param>
    /// <param name="parent">The model.</param>
    /// <param name="groupingLength">The length rows are grouped by (see the remarks), or null to predict the rows in their order.</param>
    public BatchScoringView(IDataView input, IBatchScorer<TInput> parent, Func<TInput, int>? groupingLength = null)
    {
        this.input = input;
        this.parent = parent;
        this.groupingLength = groupingLength;
        Schema = parent.GetOutputSchema(input.Schema);
    }

    /// <summary>False: the look-ahead cursor must see the rows in the same order as the main cursor.</summary>
    public bool CanShuffle => false;

    public DataViewSchema Schema { get; }

    public long? GetRowCount() => input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        ArgumentNullException.ThrowIfNull(columnsNeeded);
        int inputCount = input.Schema.Count;
        var needed = columnsNeeded.Select(c => c.Index).ToHashSet();
        var inputColumns = needed.Where(i => i < inputCount).Select(i => input.Schema[i]).ToList();
        bool outputNeeded = needed.Any(i => i >= inputCount);
        if (outputNeeded)
        {
            // Held until the cursor is disposed: the model outlives a Dispose of the transformer while this cursor runs.
            parent.AddReference();
        }

        DataViewRowCursor? main = null;
        DataViewRowCursor? ahead = null;
        try
        {
            main = input.GetRowCursor(inputColumns);
            if (outputNeeded)
            {
                ahead = input.GetRowCursor(parent.InputColumnNames.Select(name => input.Schema[name]));
            }

            return new Cursor(this, main, ahead, needed, outputNeeded);
        }
        catch
        {
            main?.Dispose();
            ahead?.Dispose();
            if (outputNeeded)
            {
                parent.ReleaseReference();
            }

            throw;
        }
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        [GetRowCursor(columnsNeeded, rand)];

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly BatchScoringView<TInput> view;
        private readonly DataViewRowCursor main;
        private readonly DataViewRowCursor? ahead;
        private readonly HashSet<int> active;
        private readonly Func<TInput>? readInput;
        private readonly int inputCount;
        private float[] outputs = [];
        private long batchStart;
        private int batchCount;
        private long row = -1;
        private bool holdsReference;

        public Cursor(BatchScoringView<TInput> view, DataViewRowCursor main, DataViewRowCursor? ahead, HashSet<int> active, bool holdsReference)
        {
            this.holdsReference = holdsReference;
            this.view = view;
            this.main = main;
            this.ahead = ahead;
            this.active = active;
            inputCount = view.input.Schema.Count;
            readInput = ahead is null ? null : view.parent.CreateInputReader(ahead);
        }

        public override DataViewSchema Schema => view.Schema;

        public override long Position => main.Position;

        public override long Batch => main.Batch;

        public override bool MoveNext()
        {
            if (!main.MoveNext())
            {
                return false;
            }

            row++;
            if (ahead is not null && row >= batchStart + batchCount)
            {
                FillBatch();
            }

            return true;
        }

        private void FillBatch()
        {
            int size = view.parent.InferenceBatchSize;
            var length = view.groupingLength;
            int window = length is null ? size : (int)Math.Min(int.MaxValue / 2, (long)size * LengthGrouping.InferenceWindowBatches);
            var inputs = new List<TInput>(Math.Min(window, 1 << 12));
            while (inputs.Count < window && ahead!.MoveNext())
            {
                inputs.Add(readInput!());
            }

            if (inputs.Count == 0)
            {
                throw new InvalidOperationException("The input data returned fewer rows to the model's input cursor than to the main cursor; the model needs a data view whose cursors see the same rows in the same order.");
            }

            outputs = length is null || inputs.Count <= size ? view.parent.Predict(inputs) : PredictGrouped(inputs, length, size);
            batchStart = row;
            batchCount = inputs.Count;
        }

        /// <summary>Predicts a window in batches of rows sorted by length; the outputs are in the window's row order.</summary>
        private float[] PredictGrouped(List<TInput> inputs, Func<TInput, int> length, int size)
        {
            var order = LengthGrouping.SortedOrder(inputs.ConvertAll(i => length(i)));
            int width = view.parent.Label.OutputCount;
            var result = new float[inputs.Count * width];
            for (int start = 0; start < order.Length; start += size)
            {
                var batch = order.AsSpan(start, Math.Min(size, order.Length - start)).ToArray();
                var part = view.parent.Predict(Array.ConvertAll(batch, i => inputs[i]));
                for (int k = 0; k < batch.Length; k++)
                {
                    Array.Copy(part, k * width, result, batch[k] * width, width);
                }
            }

            return result;
        }

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (column.Index < inputCount)
            {
                return main.GetGetter<TValue>(view.input.Schema[column.Index]);
            }

            if (!active.Contains(column.Index))
            {
                throw new InvalidOperationException($"Column '{column.Name}' was not requested when the cursor was created.");
            }

            int width = view.parent.Label.OutputCount;
            var getter = PredictionValues.CreateGetter(view.parent.Label, column.Index - inputCount, () => (outputs, (int)(row - batchStart) * width));
            return getter as ValueGetter<TValue>
                ?? throw new InvalidOperationException($"Column '{column.Name}' has type {column.Type}; it cannot be read as {typeof(TValue).Name}.");
        }

        public override ValueGetter<DataViewRowId> GetIdGetter() => main.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) =>
            column.Index < inputCount ? main.IsColumnActive(view.input.Schema[column.Index]) : active.Contains(column.Index);

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                main.Dispose();
                ahead?.Dispose();
                if (holdsReference)
                {
                    holdsReference = false;
                    view.parent.ReleaseReference();
                }
            }

            base.Dispose(disposing);
        }
    }
}
