using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>
/// The image family's training rows: streams <see cref="ImageRow"/>s from an <see cref="IDataView"/> cursor; the label is
/// read by the task, rows with a missing label are skipped (as for text), and an image that cannot be read fails naming
/// the column and the row.
/// </summary>
internal sealed class ImageTrainingData : ITrainingRows<ImageRow>
{
    private readonly IDataView data;
    private readonly ImageColumnReader images;
    private readonly string labelColumn;
    private readonly LabelInfo label;

    public ImageTrainingData(IDataView data, ImageColumnReader images, string labelColumn, LabelInfo label)
    {
        this.data = data;
        this.images = images;
        this.labelColumn = labelColumn;
        this.label = label;
    }

    /// <summary>Reads the label column only: usable rows, class counts or the label mean and spread.</summary>
    public LabelStatistics ReadLabelStatistics() => label.Task.ReadStatistics(data, labelColumn, label.ClassCount);

    /// <summary>Checks that training can start (see <see cref="Tasks.LoraTask.Validate"/>).</summary>
    public void Validate(LabelStatistics statistics, string parameterName) => label.Task.Validate(statistics, labelColumn, parameterName);

    public IEnumerable<ImageRow> Rows()
    {
        var schema = data.Schema;
        using var cursor = data.GetRowCursor([schema[images.Column], schema[labelColumn]]);
        var readLabel = label.Task.CreateLabelReader(cursor, schema[labelColumn], label.ClassCount);
        var readImage = images.CreateReader(cursor);
        while (cursor.MoveNext())
        {
            if (!readLabel(out int cls, out float value))
            {
                continue;
            }

            yield return new ImageRow(readImage(), cls, value);
        }
    }
}
