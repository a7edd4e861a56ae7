using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// The lazy result of a text model's <c>Transform</c> (<see cref="ITextScorer"/>): input columns pass through and the prediction columns
/// are computed when a cursor asks for them, one forward pass per <c>InferenceBatchSize</c> rows. A second input
/// cursor over the text column(s) runs ahead to fill each batch, so no input values are buffered besides the texts.
/// With length grouping, the look-ahead reads a window of <see cref="WindowBatches"/> batches, sorts it by text length
/// (characters of text and pair), predicts it in batches of similar length (less padding) and puts the outputs back in
/// the row order; the window's texts and outputs are the memory held.
/// </summary>
internal sealed class LoraDataView : IDataView
{
    private readonly IDataView input;
    private readonly ITextScorer parent;
    private readonly bool groupByLength;

    /// <summary>Batches per length-sorted window when grouping by length.</summary>
    internal const int WindowBatches = 8;

    public LoraDataView(IDataView input, ITextScorer parent, bool groupByLength = false)
    {
        this.input = input;
        this.parent = parent;
        this.groupByLength = groupByLength;
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
                var textColumns = new List<DataViewSchema.Column> { input.Schema[parent.Columns.Text] };
                if (parent.Columns.Pair is not null)
                {
                    textColumns.Add(input.Schema[parent.Columns.Pair]);
                }

                ahead = input.GetRowCursor(textColumns);
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
        private readonly LoraDataView view;
        private readonly DataViewRowCursor main;
        private readonly DataViewRowCursor? ahead;
        private readonly HashSet<int> active;
        private readonly ValueGetter<ReadOnlyMemory<char>>? textGetter;
        private readonly ValueGetter<ReadOnlyMemory<char>>? pairGetter;
        private readonly int inputCount;
        private float[] outputs = [];
        private long batchStart;
        private int batchCount;
        private long row = -1;
        private bool holdsReference;

        public Cursor(LoraDataView view, DataViewRowCursor main, DataViewRowCursor? ahead, HashSet<int> active, bool holdsReference)
        {
            this.holdsReference = holdsReference;
            this.view = view;
            this.main = main;
            this.ahead = ahead;
            this.active = active;
            inputCount = view.input.Schema.Count;
            if (ahead is not null)
            {
                textGetter = ahead.GetGetter<ReadOnlyMemory<char>>(view.input.Schema[view.parent.Columns.Text]);
                if (view.parent.Columns.Pair is not null)
                {
                    pairGetter = ahead.GetGetter<ReadOnlyMemory<char>>(view.input.Schema[view.parent.Columns.Pair]);
                }
            }
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
            int window = view.groupByLength ? (int)Math.Min(int.MaxValue / 2, (long)size * WindowBatches) : size;
            var texts = new List<string>(Math.Min(window, 1 << 12));
            var pairs = pairGetter is null ? null : new List<string>(texts.Capacity);
            ReadOnlyMemory<char> text = default, pair = default;
            while (texts.Count < window && ahead!.MoveNext())
            {
                textGetter!(ref text);
                texts.Add(text.ToString());
                if (pairs is not null)
                {
                    pairGetter!(ref pair);
                    pairs.Add(pair.ToString());
                }
            }

            if (texts.Count == 0)
            {
                throw new InvalidOperationException("The input data returned fewer rows to the text cursor than to the main cursor; the model needs a data view whose cursors see the same rows in the same order.");
            }

            outputs = texts.Count <= size ? view.parent.Predict(texts, pairs) : PredictGrouped(texts, pairs, size);
            batchStart = row;
            batchCount = texts.Count;
        }

        /// <summary>Predicts a window in batches of rows sorted by length; the outputs are in the window's row order.</summary>
        private float[] PredictGrouped(List<string> texts, List<string>? pairs, int size)
        {
            int count = texts.Count;
            var lengths = new int[count];
            var order = new int[count];
            for (int i = 0; i < count; i++)
            {
                lengths[i] = texts[i].Length + (pairs is null ? 0 : pairs[i].Length);
                order[i] = i;
            }

            // Stable: ties keep the row order.
            Array.Sort(order, (a, b) => lengths[a] != lengths[b] ? lengths[a].CompareTo(lengths[b]) : a.CompareTo(b));
            int width = view.parent.Label.OutputCount;
            var result = new float[count * width];
            for (int start = 0; start < count; start += size)
            {
                int n = Math.Min(size, count - start);
                var batchTexts = new string[n];
                var batchPairs = pairs is null ? null : new string[n];
                for (int k = 0; k < n; k++)
                {
                    batchTexts[k] = texts[order[start + k]];
                    if (batchPairs is not null)
                    {
                        batchPairs[k] = pairs![order[start + k]];
                    }
                }

                var part = view.parent.Predict(batchTexts, batchPairs);
                for (int k = 0; k < n; k++)
                {
                    Array.Copy(part, k * width, result, order[start + k] * width, width);
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
