using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// Row-to-row mapper of a model of any family (<see cref="IBatchScorer{TInput}"/>: text, images, and the ONNX scoring
/// package, which compiles this file too), used by <c>PredictionEngine</c>: one forward pass per row, shared by all output
/// columns of that row. Several mappers (one per PredictionEngine, one per thread) share the model.
/// </summary>
/// <typeparam name="TInput">One row's model input.</typeparam>
internal sealed class RowScoringMapper<TInput> : IRowToRowMapper
{
    private readonly IBatchScorer<TInput> parent;

    public RowScoringMapper(IBatchScorer<TInput> parent, DataViewSchema inputSchema)
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

            foreach (var name in parent.InputColumnNames)
            {
                var source = InputSchema[name];
                result[source.Index] = source;
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

    private sealed class Row : DataViewRow
    {
        private readonly RowScoringMapper<TInput> mapper;
        private readonly DataViewRow input;
        private readonly HashSet<int> active;
        private readonly Func<TInput>? readInput;
        private float[] outputs = [];
        private TInput? cachedInput;
        private long cachedPosition = -1;

        public Row(RowScoringMapper<TInput> mapper, DataViewRow input, HashSet<int> active)
        {
            this.mapper = mapper;
            this.input = input;
            this.active = active;
            if (active.Any(i => i >= mapper.InputSchema.Count))
            {
                readInput = mapper.parent.CreateInputReader(input);
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

        /// <summary>Runs the model unless this row (same position and same input) was already scored.</summary>
        private float[] Compute()
        {
            var value = readInput!();
            if (cachedPosition == input.Position && cachedInput is not null && mapper.parent.SameInput(value, cachedInput))
            {
                return outputs;
            }

            outputs = mapper.parent.Predict([value]);
            cachedInput = value;
            cachedPosition = input.Position;
            return outputs;
        }

        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) =>
            column.Index < mapper.InputSchema.Count ? input.IsColumnActive(mapper.InputSchema[column.Index]) : active.Contains(column.Index);
    }
}
