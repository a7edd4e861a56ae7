// Usage: Microsoft.ML.Lora.LoadCheck <model.zip> <texts.txt> <scores.txt>
//        Microsoft.ML.Lora.LoadCheck --images <model.zip> <image-paths.txt> <scores.txt>
// (--images: one image file per line, read as raw bytes into an "Image" column, as LoadRawImageBytes gives them.)
// Loads an ML.NET model with mlContext.Model.Load only (no registration call, no use of Microsoft.ML.Lora types), scores
// one row per line ("text", or "text<TAB>pair" for a sentence-pair model, whose pair column is "Pair"), and writes
// "PredictedLabel<TAB>score bits as hex,..." per row (an empty label when the model has no PredictedLabel column, e.g.
// regression; one score when Score is a Single), so the caller can compare bitwise.
//        Microsoft.ML.Lora.LoadCheck save <model.zip> <target.zip> <repeats>
// Loads the model, then saves it to target.zip <repeats> times with mlContext.Model.SaveAtomic (for concurrent-save tests).
using System.Globalization;
using System.Runtime.CompilerServices;
using Microsoft.ML;
using Microsoft.ML.Data;

if (args.Length == 4 && args[0] == "save")
{
    return SaveRepeatedly(args[1], args[2], int.Parse(args[3], CultureInfo.InvariantCulture));
}

bool images = args.Length == 4 && args[0] == "--images";
if (images)
{
    args = args[1..];
}

if (args.Length != 3)
{
    Console.Error.WriteLine("usage: Microsoft.ML.Lora.LoadCheck [--images] <model.zip> <texts.txt> <scores.txt> | save <model.zip> <target.zip> <repeats>");
    return 2;
}

var ml = new MLContext(seed: 1);
var model = ml.Model.Load(args[0], out _);
var scored = images
    ? model.Transform(ml.Data.LoadFromEnumerable(File.ReadAllLines(args[1]).Select(path => new ImageRow { Image = File.ReadAllBytes(path) }).ToList()))
    : model.Transform(ml.Data.LoadFromEnumerable(File.ReadAllLines(args[1]).Select(line => line.Split('\t'))
        .Select(p => new InputRow { Text = p[0], Pair = p.Length > 1 ? p[1] : string.Empty }).ToList()));

// Copy each vector at once: the cursor may reuse the buffer of the previous row.
var scores = scored.Schema["Score"].Type is VectorDataViewType
    ? scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList()
    : scored.GetColumn<float>("Score").Select(v => new[] { v }).ToList();
var labels = scored.Schema.GetColumnOrNull("PredictedLabel") is null
    ? scores.Select(_ => string.Empty).ToList()
    : scored.GetColumn<string>("PredictedLabel").ToList();
var output = scores.Zip(labels).Select(p =>
    p.Second + "\t" + string.Join(',', p.First.Select(v => BitConverter.SingleToInt32Bits(v).ToString("X8", CultureInfo.InvariantCulture))));
File.WriteAllLines(args[2], output);
(model as IDisposable)?.Dispose();
return 0;

// A separate method, so that the load mode above never references Microsoft.ML.Lora before Model.Load.
[MethodImpl(MethodImplOptions.NoInlining)]
static int SaveRepeatedly(string source, string target, int repeats)
{
    var ml = new MLContext(seed: 1);
    var model = ml.Model.Load(source, out var schema);
    for (int i = 0; i < repeats; i++)
    {
        ml.Model.SaveAtomic(model, schema, target);
    }

    (model as IDisposable)?.Dispose();
    Console.WriteLine($"saved {repeats} times");
    return 0;
}

/// <summary>Input row of the test pipelines (the label is unused at prediction time; the pair only by pair models).</summary>
internal sealed class InputRow
{
    public string Text { get; set; } = string.Empty;

    public string Pair { get; set; } = string.Empty;

    public string Label { get; set; } = string.Empty;
}

/// <summary>Input row of the image test pipeline: an encoded image (the label is unused at prediction time).</summary>
internal sealed class ImageRow
{
    public byte[] Image { get; set; } = [];

    public string Label { get; set; } = string.Empty;
}
