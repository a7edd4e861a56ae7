// Usage: Microsoft.ML.Lora.LoadCheck <model.zip> <texts.txt> <scores.txt>
//        Microsoft.ML.Lora.LoadCheck --images <model.zip> <image-paths.txt> <scores.txt>
// (--images: one image file per line, read as raw bytes into an "Image" column, as LoadRawImageBytes gives them.)
// Loads an ML.NET model with mlContext.Model.Load only (no registration call, no use of Microsoft.ML.Lora types), scores
// one text per line, and writes "PredictedLabel<TAB>score bits as hex,..." per row, so the caller can compare bitwise.
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.Data;

bool images = args.Length == 4 && args[0] == "--images";
if (images)
{
    args = args[1..];
}

if (args.Length != 3)
{
    Console.Error.WriteLine("usage: Microsoft.ML.Lora.LoadCheck <model.zip> <texts.txt> <scores.txt>");
    return 2;
}

var ml = new MLContext(seed: 1);
var model = ml.Model.Load(args[0], out _);
var lines = File.ReadAllLines(args[1]);
var scored = images
    ? model.Transform(ml.Data.LoadFromEnumerable(lines.Select(path => new ImageRow { Image = File.ReadAllBytes(path) }).ToList()))
    : model.Transform(ml.Data.LoadFromEnumerable(lines.Select(t => new InputRow { Text = t }).ToList()));
// Copy each vector at once: the cursor may reuse the buffer of the previous row.
var scores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList();
var labels = scored.GetColumn<string>("PredictedLabel").ToList();
var output = scores.Zip(labels).Select(p =>
    p.Second + "\t" + string.Join(',', p.First.Select(v => BitConverter.SingleToInt32Bits(v).ToString("X8", CultureInfo.InvariantCulture))));
File.WriteAllLines(args[2], output);
(model as IDisposable)?.Dispose();
return 0;

/// <summary>Input row of the multiclass test pipeline (the label is unused at prediction time).</summary>
internal sealed class InputRow
{
    public string Text { get; set; } = string.Empty;

    public string Label { get; set; } = string.Empty;
}

/// <summary>Input row of the image test pipeline: an encoded image (the label is unused at prediction time).</summary>
internal sealed class ImageRow
{
    public byte[] Image { get; set; } = [];

    public string Label { get; set; } = string.Empty;
}
