// LoraServing: an ASP.NET Core minimal API that serves several LoRA models on one shared base (the model chosen per
// request), and exported ONNX models scored without libtorch.
//
//   dotnet run --project samples/LoraServing -c Release                      # trains 3 demo adapters, then serves them
//   dotnet run --project samples/LoraServing -c Release -- --models DIR      # serves every .zip/.onnx model in DIR
//   dotnet run --project samples/LoraServing -c Release -- --load-test       # bounded loopback load test, then exits
//
//   curl -s localhost:5000/models
//   curl -s -X POST localhost:5000/models/yelp/predict -H 'Content-Type: application/json' -d '{"text":"Great food!"}'
//
// The demo models: one sentiment adapter per review source of the UCI sentences (Amazon, IMDb, Yelp; as one adapter per
// customer would be), each fine-tuned briefly on 240 of its source's sentences, all on the embedded MiniLM.
using System.Globalization;
using LoraServing;
using Microsoft.ML;

CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var paths = new List<string>();
string url = "http://127.0.0.1:5000";
bool loadTest = false;
int requests = 600, clients = 4;
string output = Path.Combine(Path.GetTempPath(), "LoraServing");
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--models": paths.Add(args[++i]); break;
        case "--urls": url = args[++i]; break;
        case "--load-test": loadTest = true; break;
        case "--requests": requests = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--clients": clients = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--out": output = args[++i]; break;
        default:
            Console.Error.WriteLine($"Unknown argument '{args[i]}'. Options: --models PATH (repeatable) --urls URL --load-test --requests N --clients N --out DIR");
            return 2;
    }
}

var ml = new MLContext(seed: 1);
if (paths.Count == 0)
{
    string demo = Path.Combine(output, "models");
    Console.WriteLine($"No --models given: training the demo adapters into {demo} …");
    DemoModels.Train(ml, Path.Combine(AppContext.BaseDirectory, "data", "sentiment.tsv"), demo);
    paths.Add(demo);
}

using var catalog = ModelCatalog.Load(ml, paths, DemoModels.OnnxLoader(ml));
Console.WriteLine($"Loaded {catalog.Models.Count} models: {string.Join(", ", catalog.Models.Values.Select(m => $"{m.Name} ({m.Kind})"))}.");
if (!loadTest)
{
    var app = ServingApp.Build(catalog, url);
    Console.WriteLine($"Serving on {url} (Ctrl+C stops).");
    await app.RunAsync();
    return 0;
}

var report = await LoadTestReport.RunAsync(ml, catalog, Path.Combine(AppContext.BaseDirectory, "data", "sentiment.tsv"), requests, clients, output);
Console.WriteLine(report);
return 0;
