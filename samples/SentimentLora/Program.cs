// SentimentLora: LoRA fine-tuning of all-MiniLM-L6-v2 on the UCI Sentiment Labelled Sentences (3000 sentences,
// data/README.md), in a Model-Builder-style ML.NET pipeline, compared with a linear probe on the frozen encoder.
//
//   dotnet run --project samples/SentimentLora -c Release
//   dotnet run --project samples/SentimentLora -c Release -- --epochs 3 --targets query,value --learning-rate 2e-3 --no-probe
//   dotnet run --project samples/SentimentLora -c Release -- --no-validation   # fit on all 80 %, no best-epoch selection
//   dotnet run --project samples/SentimentLora -c Release -- --no-probe --no-group   # batches without length grouping
//   dotnet run --project samples/SentimentLora -c Release -- --no-probe --no-token-cache   # tokenize every epoch
//
// Prints accuracy, F1, training time, rows/s, trainable parameters and model size; draws the training curve (loss,
// validation loss and accuracy per epoch); saves, reloads and predicts; exports to ONNX and scores the test split with
// ONNX Runtime (Microsoft.ML.Lora.Onnx), comparing the scores with Transform's.
using System.Diagnostics;
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Models;
using SentimentLora;
using Spectre.Console;
using TorchSharp;

CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
string dataPath = Path.Combine(AppContext.BaseDirectory, "data", "sentiment.tsv");
string modelPath = Path.Combine(Path.GetTempPath(), "SentimentLora.model.zip");
var ml = new MLContext(seed: 42);

var data = ml.Data.LoadFromTextFile<SentimentRow>(dataPath, separatorChar: '\t', hasHeader: true, allowQuoting: false);
var split = ml.Data.TrainTestSplit(data, testFraction: 0.2, seed: 42);
long testRows = split.TestSet.GetColumn<string>("Label").LongCount();

// Optional overrides of the defaults, to try other settings.
// Defaults (rank 8, alpha 16 on query/value, learning rate 2e-3, 4 epochs, batch 32), except that single sentences
// need no more than 64 tokens.
var options = new LoraFineTuningOptions { LabelColumnName = "Label", TextColumnName = "Text", MaxSequenceLength = 64 };
bool probe = true, validate = true;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--epochs": options.MaxEpochs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--targets": options.TargetModules = args[++i].Split(','); break;
        case "--learning-rate": options.LearningRate = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--rank": options.Rank = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--max-length": options.MaxSequenceLength = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--no-probe": probe = false; break;
        case "--no-group": options.GroupByLength = false; break;
        case "--no-token-cache": options.TokenCacheBytes = 0; break;
        case "--no-validation": validate = false; break;
        case "--precision": options.Precision = Enum.Parse<LoraPrecision>(args[++i], ignoreCase: true); break;
        case "--truncation": options.Truncation = Enum.Parse<TruncationStrategy>(args[++i], ignoreCase: true); break;
        default: Console.Error.WriteLine($"Unknown argument '{args[i]}'. Options: --epochs N --targets a,b --learning-rate X --rank R --max-length T --no-probe --no-validation --no-group --no-token-cache --truncation Head|HeadTail --precision Auto|Float32|BFloat16"); return 2;
    }
}

// Validation: a seeded 10 % of the training sentences is held out (the test set stays untouched for the final numbers).
// After each epoch fine-tuning measures loss and accuracy on it, keeps the adapter of the epoch with the lowest
// validation loss, and stops early after EarlyStoppingPatience (2) epochs without improvement.
IDataView fitSet = split.TrainSet;
long validationRows = 0;
if (validate)
{
    var holdout = ml.Data.TrainTestSplit(split.TrainSet, testFraction: 0.1, seed: 7);
    fitSet = holdout.TrainSet;
    validationRows = holdout.TestSet.GetColumn<string>("Label").LongCount();

    // The pipeline maps the label to a key before LoraFineTune, so the validation rows need the same key mapping.
    options.ValidationSet = ml.Transforms.Conversion.MapValueToKey("Label").Fit(fitSet).Transform(holdout.TestSet);
}

long trainRows = fitSet.GetColumn<string>("Label").LongCount();
AnsiConsole.MarkupLine($"[bold]SentimentLora[/]: {trainRows} training, {validationRows} validation and {testRows} test sentences (seeded 80/20 split{(validate ? ", 10 % of the 80 % held out for validation" : string.Empty)}), torch threads {torch.get_num_threads()}.");

// 1. Linear probe baseline: logistic regression on frozen, mean-pooled, normalised MiniLM embeddings, fitted on the
// whole 80 % (it has no use for a validation set; LoRA uses the same sentences, 90 % to fit and 10 % to choose the epoch).
var probeWatch = Stopwatch.StartNew();
var (probeAccuracy, probeAuc) = probe ? LinearProbe.Run(ml, split) : (double.NaN, double.NaN);
AnsiConsole.MarkupLine($"Linear probe (frozen MiniLM + LbfgsLogisticRegression): accuracy [bold]{probeAccuracy:F4}[/], AUC {probeAuc:F4} ({probeWatch.Elapsed.TotalSeconds:F0} s).");

// 2. LoRA fine-tuning: MapValueToKey -> LoraFineTune -> MapKeyToValue.
var watch = Stopwatch.StartNew();
ITransformer model = null!;
var curve = new TrainingCurve();
if (AnsiConsole.Profile.Capabilities.Interactive)
{
    AnsiConsole.Progress()
        .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
        .Start(ctx =>
        {
            var task = ctx.AddTask("LoRA fine-tuning", maxValue: 1);
            options.Progress = new InlineProgress<LoraTrainingProgress>(p =>
            {
                curve.Add(p);
                task.MaxValue = p.TotalSteps;
                task.Value = p.Step;
                task.Description = $"epoch {p.Epoch}/{p.MaxEpochs} loss {p.Loss:F3} lr {p.LearningRate:G2} {p.RowsPerSecond:F0} rows/s";
            });
            model = Pipeline(ml, options).Fit(fitSet);
        });
}
else
{
    options.Progress = new InlineProgress<LoraTrainingProgress>(p =>
    {
        curve.Add(p);
        if (p.Step % 20 == 0 || p.Step == p.TotalSteps)
        {
            Console.WriteLine($"  epoch {p.Epoch}/{p.MaxEpochs} step {p.Step}/{p.TotalSteps} loss {p.Loss:F4} lr {p.LearningRate:G3} {p.RowsPerSecond:F1} rows/s ETA {p.EstimatedRemaining:mm\\:ss}");
        }
    });
    model = Pipeline(ml, options).Fit(fitSet);
}

var trainingTime = watch.Elapsed;
var epochs = curve.Epochs();
foreach (var e in epochs)
{
    string validation = e.ValidationLoss is null ? string.Empty : $", validation loss {e.ValidationLoss:F4}, validation accuracy {e.ValidationAccuracy:F4}";
    AnsiConsole.MarkupLine($"  epoch {e.Epoch}: training loss {e.TrainingLoss:F4}{validation}");
}

int? keptEpoch = curve.KeptEpoch();
if (keptEpoch is not null)
{
    string stopped = epochs.Count < options.MaxEpochs ? $"; stopped early after epoch {epochs.Count}" : string.Empty;
    AnsiConsole.MarkupLine($"Kept the adapter of epoch {keptEpoch} (lowest validation loss){stopped}.");
}

var lora = ((IEnumerable<ITransformer>)model).OfType<LoraTransformer>().Single();

// 3. Evaluate on the held-out 20 %.
// Transform is lazy: the timed Evaluate call runs the model once over the 603 rows.
var evalWatch = Stopwatch.StartNew();
var scored = model.Transform(split.TestSet);
var metrics = ml.MulticlassClassification.Evaluate(scored, "Label", "Score", "PredictedLabel");
double evalSeconds = evalWatch.Elapsed.TotalSeconds;
var predicted = scored.GetColumn<string>("PredictedLabel").ToArray();
var actual = split.TestSet.GetColumn<string>("Label").ToArray();
double f1 = F1(actual, predicted, positive: "1");
string chartPath = Path.Combine(Path.GetTempPath(), "SentimentLora.training-curve.png");
curve.Save(chartPath, $"SentimentLora: LoRA r={options.Rank} ({string.Join(", ", options.TargetModules)}) on MiniLM", metrics.MicroAccuracy);
AnsiConsole.MarkupLine($"Training curve: {chartPath}");

// 4. Save, reload, predict.
ml.Model.Save(model, fitSet.Schema, modelPath);
long zipBytes = new FileInfo(modelPath).Length;
var reloaded = ml.Model.Load(modelPath, out _);
using var engine = ml.Model.CreatePredictionEngine<SentimentRow, SentimentPrediction>(reloaded);

// 5. Export one ONNX model (LoRA merged, pooling, head, softmax) and score the test split with ONNX Runtime through
// Microsoft.ML.Lora.Onnx, which has no TorchSharp: same columns, same accuracy.
string onnxPath = lora.ExportOnnx(Path.Combine(Path.GetTempPath(), "SentimentLora.onnx"));
using var onnx = ml.Transforms.ScoreLoraOnnx(onnxPath);
var keyedTest = ((IEnumerable<ITransformer>)model).First().Transform(split.TestSet);
var onnxWatch = Stopwatch.StartNew();
var onnxScored = onnx.Transform(keyedTest);
var onnxMetrics = ml.MulticlassClassification.Evaluate(onnxScored, "Label", "Score", "PredictedLabel");
double onnxSeconds = onnxWatch.Elapsed.TotalSeconds;
var torchScores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
var onnxScores = onnxScored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
double maxDifference = torchScores.Zip(onnxScores, (t, o) => t.Zip(o, (a, b) => Math.Abs(a - b)).Max()).Max();

var table = new Table().AddColumns("Metric", "Value");
table.AddRow("LoRA accuracy (held-out 20 %)", $"{metrics.MicroAccuracy:F4}");
if (keptEpoch is not null)
{
    var k = epochs.Single(e => e.Epoch == keptEpoch);
    table.AddRow("Validation accuracy / loss (kept epoch)", $"{k.ValidationAccuracy:F4} / {k.ValidationLoss:F4} (epoch {keptEpoch} of {epochs.Count} run)");
}

table.AddRow("LoRA F1 (positive class)", $"{f1:F4}");
table.AddRow("Linear probe accuracy / AUC", $"{probeAccuracy:F4} / {probeAuc:F4}");
table.AddRow("Training time", $"{trainingTime.TotalSeconds:F1} s ({epochs.Count} epochs{(validate ? ", validation passes included" : string.Empty)})");
table.AddRow("Training throughput", $"{trainRows * epochs.Count / trainingTime.TotalSeconds:F1} rows/s");
table.AddRow("Inference throughput", $"{testRows / evalSeconds:F1} rows/s");
table.AddRow("Trainable parameters", $"{lora.TrainableParameterCount:N0} of {lora.TotalParameterCount:N0} ({100.0 * lora.TrainableParameterCount / lora.TotalParameterCount:F2} %)");
table.AddRow("Encoder precision", $"{lora.EncoderPrecision} (option {options.Precision})");
table.AddRow("Adapted modules", $"{lora.AdaptedModules.Count} ({string.Join(", ", options.TargetModules)}), r={options.Rank}, alpha={options.Alpha}");
table.AddRow("Model file", $"{zipBytes / 1024.0:F1} KiB ({modelPath})");
table.AddRow("ONNX export: accuracy with ONNX Runtime (no TorchSharp)", $"{onnxMetrics.MicroAccuracy:F4}");
table.AddRow("ONNX export: max |Score difference| vs Transform", $"{maxDifference:E2} over {onnxScores.Length} rows");
table.AddRow("ONNX export: inference throughput", $"{testRows / onnxSeconds:F1} rows/s");
table.AddRow("ONNX file", $"{new FileInfo(onnxPath).Length / 1048576.0:F1} MiB ({onnxPath})");
AnsiConsole.Write(table);

int positiveSlot = Array.IndexOf(SentimentPrediction.SlotNames(ml, reloaded), "1");
foreach (var text in new[] { "The food was delicious and the staff were lovely.", "Worst purchase ever, it broke after a day.", "Not bad at all, I would watch it again." })
{
    var p = engine.Predict(new SentimentRow { Text = text });
    string sentiment = p.PredictedLabel == "1" ? "positive" : "negative";
    AnsiConsole.MarkupLine($"  {Markup.Escape(text)} -> [bold]{sentiment}[/] (P(positive) = {p.Score[positiveSlot]:F3})");
}

AnsiConsole.MarkupLine($"Total time {probeWatch.Elapsed.TotalSeconds:F0} s.");
return 0;

static IEstimator<ITransformer> Pipeline(MLContext ml, LoraFineTuningOptions options) =>
    ml.Transforms.Conversion.MapValueToKey("Label")
        .Append(ml.Transforms.LoraFineTune(options))
        .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));

static double F1(string[] actual, string[] predicted, string positive)
{
    int tp = 0, fp = 0, fn = 0;
    for (int i = 0; i < actual.Length; i++)
    {
        bool a = actual[i] == positive, p = predicted[i] == positive;
        tp += a && p ? 1 : 0;
        fp += !a && p ? 1 : 0;
        fn += a && !p ? 1 : 0;
    }

    return 2.0 * tp / Math.Max(1, 2 * tp + fp + fn);
}
