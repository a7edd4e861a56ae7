using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// Row-to-row mapper of a text model (<see cref="ITextScorer"/>), used by <c>PredictionEngine</c>: one forward pass per row, shared
/// by all output columns of that row. Several mappers (one per PredictionEngine, one per thread) share the model.
/// </summary>
internal sealed class LoraRowMapper : IRowToRowMapper
{
    private readonly ITextScorer parent;

    public LoraRowMapper(ITextScorer parent, DataViewSchema inputSchema)
    {
        this.parent = parent;
        InputSchema = inputSchema;
        OutputSchema = parent.GetOutputSchema(inputSchema);
    }

    public DataViewSchema InputSchema { get; }

    public DataViewSchema OutputSchema { get; }

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns)
    {
        ArgumentNullException.ThrowIfNull(dependingColumns);
        var result = new Dictionary<int, DataViewSchema.Column>();
        foreach (var column in dependingColumns)
        {
            if (column.Index < InputSchema.Count)
            {
                result[column.Index] = InputSchema[column.Index];
                continue;
            }

            foreach (var text in TextColumns())
            {
                result[text.Index] = text;
            }
        }

        return result.Values.OrderBy(c => c.Index).ToList();
    }

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(activeColumns);
        return new Row(this, input, activeColumns.Select(c => c.Index).ToHashSet());
    }

    private IEnumerable<DataViewSchema.Column> TextColumns()
    {
        yield return InputSchema[parent.Columns.Text];
        if (parent.Columns.Pair is not null)
        {
            yield return InputSchema[parent.Columns.Pair];
        }
    }

    private sealed class Row : DataViewRow
    {
        private readonly LoraRowMapper mapper;
        private readonly DataViewRow input;
        private readonly HashSet<int> active;
        private readonly ValueGetter<ReadOnlyMemory<char>>? textGetter;
        private readonly ValueGetter<ReadOnlyMemory<char>>? pairGetter;
        private float[] outputs = [];
        private string? cachedText;
        private string? cachedPair;
        private long cachedPosition = -1;

        public Row(LoraRowMapper mapper, DataViewRow input, HashSet<int> active)
        {
            this.mapper = mapper;
            this.input = input;
            this.active = active;
            int inputCount = mapper.InputSchema.Count;
            if (active.Any(i => i >= inputCount))
            {
                textGetter = input.GetGetter<ReadOnlyMemory<char>>(mapper.InputSchema[mapper.parent.Columns.Text]);
                if (mapper.parent.Columns.Pair is not null)
                {
                    pairGetter = input.GetGetter<ReadOnlyMemory<char>>(mapper.InputSchema[mapper.parent.Columns.Pair]);
                }
            }
        }

        public override DataViewSchema Schema => mapper.OutputSchema;

        public override long Position => input.Position;

        public override long Batch => input.Batch;

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            int inputCount = mapper.InputSchema.Count;
            if (column.Index < inputCount)
            {
                return input.GetGetter<TValue>(mapper.InputSchema[column.Index]);
            }

            if (!active.Contains(column.Index))
            {
                throw new InvalidOperationException($"Column '{column.Name}' is not active in this row.");
            }

            var getter = PredictionValues.CreateGetter(mapper.parent.Label, column.Index - inputCount, () => (Compute(), 0));
            return getter as ValueGetter<TValue>
                ?? throw new InvalidOperationException($"Column '{column.Name}' has type {column.Type}; it cannot be read as {typeof(TValue).Name}.");
        }

        /// <summary>Runs the model unless this row (same position and same text) was already scored.</summary>
        private float[] Compute()
        {
            ReadOnlyMemory<char> text = default, pair = default;
            textGetter!(ref text);
            pairGetter?.Invoke(ref pair);
            if (cachedPosition == input.Position && cachedText is not null && text.Span.SequenceEqual(cachedText) &&
                (pairGetter is null || pair.Span.SequenceEqual(cachedPair)))
            {
                return outputs;
            }

            cachedText = text.ToString();
            cachedPair = pairGetter is null ? null : pair.ToString();
            outputs = mapper.parent.Predict([cachedText], cachedPair is null ? null : [cachedPair]);
            cachedPosition = input.Position;
            return outputs;
        }

        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) =>
            column.Index < mapper.InputSchema.Count ? input.IsColumnActive(mapper.InputSchema[column.Index]) : active.Contains(column.Index);
    }
}
