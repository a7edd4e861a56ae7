// ImageLora: Fashion-MNIST (a seeded subset, data/README.md) classified three ways, side by side in one run, with the
// ImageNet ResNet-18 that ML.NET's DnnImageFeaturizer ships:
//   (a) ML.NET's recipe: frozen ResNet-18 features (DnnFeaturizeImage, 224×224) + LbfgsMaximumEntropy;
//   (b) LoRA on the convolutions of the same network + a trainable linear head, through ML.NET's LoraFineTuneImage;
//   (c) only a linear head on that network imported into TorchSharp (what the adapters add is the difference between (b) and (c)).
//
//   dotnet run --project samples/ImageLora -c Release
//   dotnet run --project samples/ImageLora -c Release -- --size 84 --epochs 3 --train 2000
//   dotnet run --project samples/ImageLora -c Release -- --data /usr/share/datasets/fashion-mnist --train 10000
//   dotnet run --project samples/ImageLora -c Release -- --make-subset /usr/share/datasets/fashion-mnist samples/ImageLora/data
//
// Prints accuracy, macro-F1, training time, trainable parameters and model size for each; writes a confusion-matrix PNG
// per method and the per-epoch curves of (b) and (c).
using System.Diagnostics;
using System.Globalization;
using ImageLora;

CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var total = Stopwatch.StartNew();
RunSettings settings;
try
{
    settings = CommandLine.Parse(args, out var makeSubset);
    if (makeSubset is var (source, target))
    {
        FashionMnist.WriteSubset(source, target, CommandLine.SubsetTrainCount, CommandLine.SubsetTestCount);
        Console.WriteLine($"Wrote {CommandLine.SubsetTrainCount} training and {CommandLine.SubsetTestCount} test images to {target}.");
        return 0;
    }
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(CommandLine.Usage);
    return 2;
}

var report = SampleRun.Execute(settings, Console.WriteLine);
Console.WriteLine();
Console.WriteLine($"{"method",-55} {"accuracy",8} {"macro-F1",8} {"train s",8} {"test s",7} {"trainable",10} {"model file",11}");
for (int m = 0; m < report.Results.Count; m++)
{
    var r = report.Results[m];
    Console.WriteLine($"{r.Name,-55} {report.Accuracy(m),8:F4} {report.MacroF1(m),8:F4} " +
        $"{r.TrainingTime.TotalSeconds,8:F1} {r.PredictTime.TotalSeconds,7:F1} {r.TrainableParameters,10:N0} {r.ModelBytes / 1024.0,7:F0} KiB");
}

Console.WriteLine($"Charts: {report.ConfusionMatrixPath}, {report.EpochCurvePath}");
Console.WriteLine($"Total {total.Elapsed.TotalSeconds:F0} s (process CPU time {Environment.CpuUsage.TotalTime.TotalSeconds:F0} s).");
return 0;
