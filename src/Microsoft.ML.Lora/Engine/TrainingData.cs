using System.Globalization;
using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Streams <see cref="TrainingRow"/>s from an <see cref="IDataView"/> cursor; rows with a missing label (key 0, or a NaN or
/// infinite regression label) are skipped, and Fit logs how many.
/// </summary>
internal sealed class TrainingData
{
    private readonly IDataView data;
    private readonly string textColumn;
    private readonly string? pairColumn;
    private readonly string labelColumn;
    private readonly LoraTaskKind task;

    public TrainingData(IDataView data, string textColumn, string? pairColumn, string labelColumn, LoraTaskKind task)
    {
        this.data = data;
        this.textColumn = textColumn;
        this.pairColumn = pairColumn;
        this.labelColumn = labelColumn;
        this.task = task;
    }

    /// <summary>Reads the label column only: counts usable rows and per-class counts or the label mean and spread.</summary>
    public LabelStatistics ReadLabelStatistics(int classCount)
    {
        var column = data.Schema[labelColumn];
        using var cursor = data.GetRowCursor([column]);
        long rows = 0, skipped = 0;
        var counts = new long[Math.Max(classCount, 2)];
        double sum = 0, sumSquares = 0;
        switch (task)
        {
            case LoraTaskKind.MulticlassClassification:
            {
                var getter = cursor.GetGetter<uint>(column);
                uint key = 0;
                while (cursor.MoveNext())
                {
                    getter(ref key);
                    if (key == 0 || key > classCount)
                    {
                        skipped++;
                        continue;
                    }

                    counts[key - 1]++;
                    rows++;
                }

                break;
            }

            case LoraTaskKind.BinaryClassification:
            {
                var getter = cursor.GetGetter<bool>(column);
                bool value = false;
                while (cursor.MoveNext())
                {
                    getter(ref value);
                    counts[value ? 1 : 0]++;
                    rows++;
                }

                break;
            }

            default:
            {
                var getter = cursor.GetGetter<float>(column);
                float value = 0;
                while (cursor.MoveNext())
                {
                    getter(ref value);
                    if (!float.IsFinite(value))
                    {
                        skipped++;
                        continue;
                    }

                    sum += value;
                    sumSquares += (double)value * value;
                    rows++;
                }

                break;
            }
        }

        double mean = rows > 0 ? sum / rows : 0;
        double variance = rows > 1 ? Math.Max(0, (sumSquares - rows * mean * mean) / (rows - 1)) : 0;
        return new LabelStatistics(rows, counts, mean, Math.Sqrt(variance), skipped);
    }

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
        ValueGetter<uint>? keyGetter = task == LoraTaskKind.MulticlassClassification ? cursor.GetGetter<uint>(schema[labelColumn]) : null;
        ValueGetter<bool>? boolGetter = task == LoraTaskKind.BinaryClassification ? cursor.GetGetter<bool>(schema[labelColumn]) : null;
        ValueGetter<float>? floatGetter = task == LoraTaskKind.Regression ? cursor.GetGetter<float>(schema[labelColumn]) : null;
        ReadOnlyMemory<char> text = default, pair = default;
        uint key = 0;
        bool flag = false;
        float value = 0;
        while (cursor.MoveNext())
        {
            int cls = 0;
            float target = 0;
            if (keyGetter is not null)
            {
                keyGetter(ref key);
                if (key == 0)
                {
                    continue;
                }

                cls = (int)key - 1;
            }
            else if (boolGetter is not null)
            {
                boolGetter(ref flag);
                cls = flag ? 1 : 0;
                target = cls;
            }
            else
            {
                floatGetter!(ref value);
                if (!float.IsFinite(value))
                {
                    continue;
                }

                target = value;
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

    /// <summary>Checks that training can start: rows present, at least two classes, a label that varies.</summary>
    /// <exception cref="ArgumentException">Names the data, the label column and what is wrong.</exception>
    public void Validate(LabelStatistics statistics, string parameterName)
    {
        if (statistics.Rows == 0)
        {
            throw new ArgumentException(
                $"The training data has no rows with a label in column '{labelColumn}'; LoRA fine-tuning needs labelled rows.", parameterName);
        }

        if (task != LoraTaskKind.Regression)
        {
            int present = statistics.ClassCounts.Count(c => c > 0);
            if (present < 2)
            {
                int only = Array.FindIndex(statistics.ClassCounts, c => c > 0);
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                    $"Label column '{labelColumn}' has a single class (all {statistics.Rows} rows have class index {only}); classification needs at least two classes."),
                    parameterName);
            }
        }
        else if (!(statistics.StandardDeviation > 0))
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"Label column '{labelColumn}' has the same value ({statistics.Mean}) in all {statistics.Rows} rows; regression needs varying labels."),
                parameterName);
        }
    }
}

/// <summary>
/// Label facts read before training: usable rows, class counts, label mean and spread, and the rows skipped for a missing
/// label (key 0 or out of range, or a NaN or infinite regression label).
/// </summary>
internal sealed record LabelStatistics(long Rows, long[] ClassCounts, double Mean, double StandardDeviation, long Skipped = 0);
