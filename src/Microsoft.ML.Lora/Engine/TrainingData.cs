using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine.Tasks;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The text family's training rows: streams <see cref="TrainingRow"/>s from an <see cref="IDataView"/> cursor; the label is
/// read by the task (<see cref="LoraTask.CreateLabelReader"/>), and rows with a missing label (key 0, or a NaN or infinite
/// regression label) are skipped, and Fit logs how many.
/// </summary>
internal sealed class TrainingData : ITrainingRows<TrainingRow>
{
    private readonly IDataView data;
    private readonly string textColumn;
    private readonly string? pairColumn;
    private readonly string labelColumn;
    private readonly LabelInfo label;

    public TrainingData(IDataView data, string textColumn, string? pairColumn, string labelColumn, LabelInfo label)
    {
        this.data = data;
        this.textColumn = textColumn;
        this.pairColumn = pairColumn;
        this.labelColumn = labelColumn;
        this.label = label;
    }

    /// <summary>Reads the label column only: counts usable rows and per-class counts or the label mean and spread.</summary>
    public LabelStatistics ReadLabelStatistics() => label.Task.ReadStatistics(data, labelColumn, label.ClassCount);

    /// <summary>Streams the rows in data order (one cursor pass).</summary>
    public IEnumerable<TrainingRow> Rows()
    {
        var schema = data.Schema;
        var columns = new List<DataViewSchema.Column> { schema[textColumn], schema[labelColumn] };
        if (pairColumn is not null)
        {
            columns.Add(schema[pairColumn]);
        }

        using var cursor = data.GetRowCursor(columns);
        var textGetter = cursor.GetGetter<ReadOnlyMemory<char>>(schema[textColumn]);
        var pairGetter = pairColumn is null ? null : cursor.GetGetter<ReadOnlyMemory<char>>(schema[pairColumn]);
        var readLabel = label.Task.CreateLabelReader(cursor, schema[labelColumn], label.ClassCount);
        ReadOnlyMemory<char> text = default, pair = default;
        while (cursor.MoveNext())
        {
            if (!readLabel(out int cls, out float target))
            {
                continue;
            }

            textGetter(ref text);
            string? second = null;
            if (pairGetter is not null)
            {
                pairGetter(ref pair);
                second = pair.ToString();
            }

            yield return new TrainingRow(text.ToString(), second, cls, target);
        }
    }

    /// <summary>Checks that training can start: rows present, and what the task needs (two classes, a label that varies).</summary>
    /// <exception cref="ArgumentException">Names the data, the label column and what is wrong.</exception>
    public void Validate(LabelStatistics statistics, string parameterName) => label.Task.Validate(statistics, labelColumn, parameterName);
}

/// <summary>
/// Label facts read before training: usable rows, class counts, label mean and spread, and the rows skipped for a missing
/// label (key 0 or out of range, or a NaN or infinite regression label).
/// </summary>
internal sealed record LabelStatistics(long Rows, long[] ClassCounts, double Mean, double StandardDeviation, long Skipped = 0);
